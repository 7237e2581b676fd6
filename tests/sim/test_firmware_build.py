"""The firmware SDK builder: real arm-none-eabi-gcc output, cached, named after the core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim.firmware_build import build_firmware
from smarter_common.errors import ConfigError
from smarter_common.firmware_elf import check_fits, read_elf_facts
from testbed.simulator import REPO

SIM = (sys.executable, "-m", "sim")
ARCHS = {
    "cortex-m3": "v7-M",
    "cortex-m4": "v7E-M",
    "cortex-m7": "v7E-M",
    "cortex-m33": "v8-M.main",
}


@pytest.mark.parametrize("cpu", list(ARCHS))
@pytest.mark.parametrize("kind", ["hello", "crash", "lockup", "hang", "echo", "sensor"])
def test_built_firmware_records_the_core_architecture(tmp_path: Path, kind: str, cpu: str) -> None:
    elf = build_firmware(kind, cpu, tmp_path)

    facts = read_elf_facts(elf)
    assert facts.arch == ARCHS[cpu]
    assert facts.profile == "M"
    assert facts.is_firmware
    check_fits(facts, cpu)


def test_builds_are_cached_by_sources_and_arguments(tmp_path: Path) -> None:
    first = build_firmware("crash", "cortex-m4", tmp_path, crash_after=2)
    stamp = first.stat().st_mtime_ns

    again = build_firmware("crash", "cortex-m4", tmp_path, crash_after=2)
    other = build_firmware("crash", "cortex-m4", tmp_path, crash_after=5)

    assert again == first
    assert again.stat().st_mtime_ns == stamp
    assert other != first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])


def test_an_unknown_kind_is_refused_and_builds_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no example firmware 'blink'"):
        build_firmware("blink", "cortex-m4", tmp_path / "out")

    assert list(tmp_path.iterdir()) == []


def test_an_unknown_cpu_is_refused_and_builds_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no core type 'cortex-a53'"):
        build_firmware("hello", "cortex-a53", tmp_path / "out")

    assert list(tmp_path.iterdir()) == []


def test_the_build_firmware_command_prints_the_elf_path(tmp_path: Path) -> None:
    result = subprocess.run(
        [*SIM, "build-firmware", "--kind", "hello", "--cpu", "cortex-m7", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )

    elf = Path(result.stdout.strip())
    assert elf.parent == tmp_path
    assert read_elf_facts(elf).arch == "v7E-M"
