"""`smarter-sim up` and `down`: readiness, refusals, and that stopping leaves nothing behind."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.mounts import mounts_under
from smarter_common.procfs import process_alive
from smarter_common.remoteproc import core_by_id
from testbed.simulator import REPO, running_simulator
from tests.sim.conftest import firmware, write_attr

pytestmark = [pytest.mark.fuse, pytest.mark.qemu]


def sim_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_hello(root: Path) -> None:
    (root / "lib/firmware/hello.elf").write_bytes(firmware("hello", "cortex-m4").read_bytes())
    state = root / "sys/class/remoteproc/remoteproc0"
    write_attr(state / "firmware", "hello.elf")
    write_attr(state / "state", "start")


def test_down_stops_the_simulator_and_removes_only_what_it_made(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "keep.txt").write_text("mine\n")
    with running_simulator(root, ["cortex-m4"]) as simulator:
        start_hello(root)
        qemus = simulator.child_pids()
        assert len(qemus) == 1

        result = sim_command("down", "--root", str(root))

        assert result.returncode == 0, result.stderr
        assert simulator.process.wait(timeout=30) == 0
        assert mounts_under(root) == []
        assert not process_alive(qemus[0])
        assert sorted(p.name for p in root.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_unmounts_and_ends_the_cores(tmp_path: Path, signum: int) -> None:
    with running_simulator(tmp_path, ["cortex-m4"]) as simulator:
        start_hello(tmp_path)
        qemus = simulator.child_pids()

        simulator.process.send_signal(signum)

        assert simulator.process.wait(timeout=30) == 0
        assert mounts_under(tmp_path) == []
        assert qemus and not any(process_alive(pid) for pid in qemus)
        assert list(tmp_path.iterdir()) == []


# `down` of an idle simulator takes well under a second, most of it the CLI's start-up; a
# shutdown that waited for the reader (or for a FUSE loop that cannot see it) takes 10 s or more.
PROMPT_DOWN_S = 3.0


def test_down_is_prompt_and_unmounts_even_while_a_reader_holds_a_file_open(
    tmp_path: Path,
) -> None:
    with running_simulator(tmp_path, ["cortex-m3"]) as simulator:
        held = os.open(tmp_path / "sys/class/remoteproc/remoteproc0/state", os.O_RDONLY)
        try:
            started = time.monotonic()
            result = sim_command("down", "--root", str(tmp_path))
            exit_status = simulator.process.wait(timeout=30)
            took = time.monotonic() - started

            assert result.returncode == 0, result.stderr
            assert exit_status == 0
            assert took < PROMPT_DOWN_S, f"down took {took:.1f}s:\n{simulator.log()}"
            assert "fuse_loop_did_not_end" not in simulator.log()
            assert mounts_under(tmp_path) == []
            # The connection was aborted: the reader sees the filesystem gone, as after an
            # unplugged device, instead of keeping the simulator alive.
            with pytest.raises(OSError) as failure:
                os.pread(held, 64, 0)
            assert failure.value.errno == errno.ENOTCONN
        finally:
            with contextlib.suppress(OSError):
                os.close(held)


def test_down_when_nothing_runs_is_not_an_error(tmp_path: Path) -> None:
    result = sim_command("down", "--root", str(tmp_path))

    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_up_on_a_root_already_served_is_refused(tmp_path: Path) -> None:
    with running_simulator(tmp_path, ["cortex-m4"]) as simulator:
        result = sim_command("up", "--root", str(tmp_path), "--core", "cortex-m7")

        assert result.returncode == 1
        assert f"a simulator (pid {simulator.pid}) already serves {tmp_path}" in result.stderr
        assert "smarter-sim down --root" in result.stderr
        remote = core_by_id(simulator.host, "remoteproc0")
        assert remote is not None and remote.name == "cortex-m4"
        assert core_by_id(simulator.host, "remoteproc1") is None


def test_up_with_an_unknown_core_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    result = sim_command("up", "--root", str(tmp_path), "--core", "cortex-a53")

    assert result.returncode == 2
    assert "invalid choice: 'cortex-a53'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_up_on_a_missing_root_is_refused(tmp_path: Path) -> None:
    result = sim_command("up", "--root", str(tmp_path / "absent"), "--core", "cortex-m4")

    assert result.returncode == 1
    assert f"the root {tmp_path / 'absent'} is not a directory" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_named_board_sets_the_devicetree_model_and_compatible(tmp_path: Path) -> None:
    with running_simulator(tmp_path, ["cortex-m4"], board="stm32mp157c-dk2") as simulator:
        base = simulator.host.devicetree_base

        assert (base / "model").read_bytes() == (
            b"STMicroelectronics STM32MP157C-DK2 Discovery Board\0"
        )
        assert (base / "compatible").read_bytes() == b"st,stm32mp157c-dk2\0st,stm32mp157\0"


def test_a_killed_simulator_takes_its_qemus_along_and_down_clears_its_mount(
    tmp_path: Path,
) -> None:
    with running_simulator(tmp_path, ["cortex-m4"]) as simulator:
        start_hello(tmp_path)
        qemus = simulator.child_pids()
        simulator.process.kill()
        simulator.process.wait(timeout=30)
        assert mounts_under(tmp_path) != []

        refused = sim_command("up", "--root", str(tmp_path), "--core", "cortex-m4")
        cleared = sim_command("down", "--root", str(tmp_path))

        assert refused.returncode == 1
        assert "still mounted from an earlier run" in refused.stderr
        assert cleared.returncode == 0, cleared.stderr
        assert mounts_under(tmp_path) == []
        assert qemus and not any(process_alive(pid) for pid in qemus)
        assert not (tmp_path / "run/smarter-sim/pid").exists()

    # What the killed one left (device nodes, console links) does not stop a new simulator.
    with running_simulator(tmp_path, ["cortex-m7"]) as again:
        remote = core_by_id(again.host, "remoteproc0")
        assert remote is not None and remote.name == "cortex-m7"
        assert (tmp_path / "dev/ttyRPMSG0").resolve().is_char_device()
        assert (tmp_path / "run/smarter-sim/pid").exists()
    assert not (tmp_path / "run/smarter-sim/pid").exists()
    assert not (tmp_path / "dev/ttyRPMSG0").is_symlink()
