"""Fixtures for the simulator's tests: example firmware, a simulator per module, core access."""

from __future__ import annotations

import errno
import os
import select
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sim.firmware_build import build_firmware
from smarter_common.remoteproc import RemoteCore, core_by_id
from testbed.simulator import Simulator, running_simulator

# Builds are cached by content hash; the directory is ignored by git.
FIRMWARE_CACHE = Path(__file__).resolve().parents[2] / "sim" / "firmware" / "build" / "tests"
# One core of every type the simulator has: remoteproc0..3.
CORES = ("cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33")


def firmware(kind: str, cpu: str, *, crash_after: int = 3) -> Path:
    return build_firmware(kind, cpu, FIRMWARE_CACHE, crash_after=crash_after)


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    with running_simulator(tmp_path_factory.mktemp("root"), CORES) as running:
        yield running


@pytest.fixture
def stop_cores(simulator: Simulator) -> Iterator[None]:
    """Leave every core offline, with the kernel's default recovery, whatever the test did."""
    yield
    for index in range(len(CORES)):
        core = core_by_id(simulator.host, f"remoteproc{index}")
        assert core is not None
        bring_offline(core)
        write_attr(core.sysfs / "recovery", "enabled")


def bring_offline(remote: RemoteCore, attempts: int = 5) -> None:
    """Stop a core the way the kernel allows: a crashed one is recovered, then stopped."""
    write_attr(remote.sysfs / "recovery", "disabled")
    for _ in range(attempts):
        current = remote.state()
        if current == "offline":
            return
        if current == "crashed":
            write_attr(remote.sysfs / "recovery", "recover")
            continue
        try:
            write_attr(remote.sysfs / "state", "stop")
        except OSError as error:
            if error.errno != errno.EINVAL:  # it crashed again before the stop
                raise
    raise AssertionError(f"{remote.device_id} stays {remote.state()}")


def core(simulator: Simulator, index: int) -> RemoteCore:
    found = core_by_id(simulator.host, f"remoteproc{index}")
    assert found is not None
    return found


def install(simulator: Simulator, source: Path, name: str) -> None:
    target = simulator.host.lib_firmware / name
    target.write_bytes(source.read_bytes())


def write_attr(path: Path, text: str) -> None:
    """One write(2) on a freshly opened file, as `echo text > path` does."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def write_errno(path: Path, text: str) -> int:
    """The errno of writing `text` to `path`; fails the test if the write succeeds."""
    try:
        write_attr(path, text)
    except OSError as error:
        assert error.errno is not None
        return error.errno
    raise AssertionError(f"writing {text!r} to {path} succeeded")


def wait_for_state(remote: RemoteCore, state: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while remote.state() != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"{remote.device_id} is {remote.state()}, not {state}")
        time.sleep(0.05)


class ConsoleReader:
    """Reads a console tty without blocking the test forever."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        self.text = ""

    def read_until(self, needle: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} not on the console; got {self.text!r}")
            readable, _, _ = select.select([self.fd], [], [], remaining)
            if readable:
                try:
                    self.text += os.read(self.fd, 4096).decode(errors="replace")
                except OSError as error:
                    if error.errno != errno.EAGAIN:
                        raise
        return self.text

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def console_of(simulator: Simulator) -> Iterator[Callable[[int], ConsoleReader]]:
    readers: list[ConsoleReader] = []

    def open_console(index: int) -> ConsoleReader:
        reader = ConsoleReader(simulator.host.dev / f"ttyRPMSG{index}")
        readers.append(reader)
        return reader

    yield open_console
    for reader in readers:
        reader.close()
