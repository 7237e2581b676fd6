"""Firmware ELF facts read from real binaries built with Debian's arm-none-eabi-gcc."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from smarter_common.firmware_elf import FirmwareError, check_fits, is_elf, read_elf_facts

Build = Callable[..., Path]

_SOURCE = "void _start(void) { for (;;) { } }\n"


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        pytest.fail("arm-none-eabi-gcc is missing: run scripts/setup.sh")
    workdir = tmp_path_factory.mktemp("elf")
    source = workdir / "start.c"
    source.write_text(_SOURCE)

    def _build(*flags: str) -> Path:
        out = workdir / ("_".join(flag.lstrip("-").replace("=", "-") for flag in flags) + ".elf")
        if not out.exists():
            subprocess.run([gcc, *flags, "-nostdlib", "-o", str(out), str(source)], check=True)
        return out

    return _build


@pytest.mark.parametrize(
    ("cpu", "arch"),
    [
        ("cortex-m0", "v6S-M"),
        ("cortex-m3", "v7-M"),
        ("cortex-m4", "v7E-M"),
        ("cortex-m7", "v7E-M"),
        ("cortex-m33", "v8-M.main"),
        ("cortex-r5", "v7-R"),
    ],
)
def test_reads_architecture_of_microcontroller_firmware(build: Build, cpu: str, arch: str) -> None:
    facts = read_elf_facts(build(f"-mcpu={cpu}", "-mthumb"))
    assert facts.machine == "EM_ARM"
    assert facts.elf_class == 32
    assert facts.arch == arch
    assert facts.is_firmware


def test_firmware_fits_cores_that_run_its_architecture(build: Build) -> None:
    m3 = read_elf_facts(build("-mcpu=cortex-m3", "-mthumb"))
    for core in ("cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33"):
        check_fits(m3, core)


def test_newer_architecture_is_refused_on_older_core(build: Build) -> None:
    m33 = read_elf_facts(build("-mcpu=cortex-m33", "-mthumb"))
    with pytest.raises(FirmwareError, match=r"v8-M\.main, but the core is a cortex-m4"):
        check_fits(m33, "cortex-m4")


def test_dsp_firmware_is_refused_on_cortex_m3(build: Build) -> None:
    m4 = read_elf_facts(build("-mcpu=cortex-m4", "-mthumb"))
    with pytest.raises(FirmwareError, match="core is a cortex-m3"):
        check_fits(m4, "cortex-m3")


def test_application_profile_arm_is_not_firmware(build: Build) -> None:
    a7 = read_elf_facts(build("-march=armv7-a", "-marm"))
    assert a7.profile == "A"
    assert not a7.is_firmware
    with pytest.raises(FirmwareError, match="ARM v7-A, not microcontroller firmware"):
        check_fits(a7, "cortex-m4")


def test_host_executable_is_not_firmware() -> None:
    host_binary = Path(shutil.which("true") or "/bin/true").resolve()
    facts = read_elf_facts(host_binary)
    assert not facts.is_firmware
    with pytest.raises(FirmwareError, match="not microcontroller firmware"):
        check_fits(facts, None)


def test_non_elf_file_is_a_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    assert not is_elf(script)
    with pytest.raises(FirmwareError, match=r"run\.sh is not an ELF file"):
        read_elf_facts(script)


def test_truncated_elf_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.elf"
    broken.write_bytes(b"\x7fELF\x01\x01\x01" + b"\0" * 5)
    assert is_elf(broken)
    with pytest.raises(FirmwareError, match="cannot read firmware"):
        read_elf_facts(broken)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FirmwareError, match="cannot read firmware"):
        read_elf_facts(tmp_path / "absent.elf")


def test_unknown_core_type_is_refused(build: Build) -> None:
    facts = read_elf_facts(build("-mcpu=cortex-m4", "-mthumb"))
    with pytest.raises(FirmwareError, match="unknown core type 'cortex-x9'"):
        check_fits(facts, "cortex-x9")
