"""Run the simulated gateway (`python -m sim up`) for a test, and prove it cleaned up after.

Tests that need remote cores use `running_simulator(root, ["cortex-m4"])`: it yields once the
simulator prints `ready`, and on exit stops it and fails if a mount under `root` or one of the
simulator's QEMU processes is left behind. Missing FUSE or QEMU is an error with the install
hint, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sim.mounts import mounts_under
from smarter_common.deadline import Deadline
from smarter_common.hostroot import HostRoot
from smarter_common.procfs import process_alive

REPO = Path(__file__).resolve().parent.parent
INSTALL_HINT = "run scripts/setup.sh as root (Debian packages fuse3, qemu-system-arm)"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class SimulatorUnavailableError(RuntimeError):
    """The machine lacks what the simulator needs."""


@dataclass
class Simulator:
    """A running simulator: its host root and process."""

    root: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    host: HostRoot = field(init=False)

    def __post_init__(self) -> None:
        self.host = HostRoot(self.root)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        """The simulator's child processes (its QEMUs) right now."""
        children: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                children += [int(pid) for pid in (task / "children").read_text().split()]
        return children


def require_simulator_prerequisites() -> None:
    """Raise with the install hint unless FUSE and QEMU are present."""
    missing = []
    if not Path("/dev/fuse").exists():
        missing.append("/dev/fuse")
    for program in ("fusermount3", "qemu-system-arm"):
        if shutil.which(program) is None:
            missing.append(program)
    if missing:
        raise SimulatorUnavailableError(f"the simulator needs {', '.join(missing)}: {INSTALL_HINT}")


@contextlib.contextmanager
def running_simulator(
    root: Path, cores: Sequence[str], board: str | None = None
) -> Iterator[Simulator]:
    """Start `python -m sim up` on `root` with `cores`; stop it and check cleanup on exit."""
    require_simulator_prerequisites()
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "sim", "--log-format", "console", "up", "--root", str(root)]
    for cpu in cores:
        command += ["--core", cpu]
    if board is not None:
        command += ["--board", board]
    log_fd, log_name = tempfile.mkstemp(prefix="smarter-sim-", suffix=".log")
    log_path = Path(log_name)
    try:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=log_fd, stdin=subprocess.DEVNULL
        )
    finally:
        os.close(log_fd)
    simulator = Simulator(root, process, log_path)
    seen_children: set[int] = set()
    try:
        _wait_ready(simulator)
        try:
            yield simulator
        finally:
            seen_children.update(simulator.child_pids())
    finally:
        _stop(simulator)
        log = simulator.log()
        log_path.unlink(missing_ok=True)
        left_mounted = mounts_under(root)
        left_running = [pid for pid in seen_children if process_alive(pid)]
        if left_mounted or left_running:
            raise AssertionError(
                f"the simulator left mounts {left_mounted} and processes {left_running};"
                f" its log:\n{log}"
            )


def _wait_ready(simulator: Simulator) -> None:
    assert simulator.process.stdout is not None
    deadline = Deadline(READY_TIMEOUT)
    output = b""
    while b"ready\n" not in output:
        remaining = deadline.remaining()
        if remaining <= 0 or simulator.process.poll() is not None:
            raise SimulatorUnavailableError(
                f"the simulator did not become ready (exit {simulator.process.poll()}):"
                f" {simulator.log()}"
            )
        readable, _, _ = select.select([simulator.process.stdout], [], [], min(remaining, 0.2))
        if readable:
            output += os.read(simulator.process.stdout.fileno(), 4096)


def _stop(simulator: Simulator) -> None:
    process = simulator.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(
                f"the simulator ignored SIGTERM for {STOP_TIMEOUT}s: {simulator.log()}"
            ) from None
    if process.stdout is not None:
        process.stdout.close()
