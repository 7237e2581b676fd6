"""The firmware containers' harness: a simulated gateway (two cores), the test process as a
child subreaper like containerd's runc shim, and the shim's calls to the runtime (`Shim`).

Test modules import the fixtures (`simulator`, `subreaper`, `shim`) from here; the gateway is
module-scoped, one per test module. Firmware is built with arm-none-eabi-gcc and runs in QEMU.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sim.firmware_build import build_firmware
from smarter_common.procfs import process_alive
from smarter_common.remoteproc import RemoteCore, core_by_id
from smarter_common.remoteproc_control import stop_core
from testbed.simulator import Simulator, running_simulator

from .conftest import MakeBundle, runtime

FIRMWARE_CACHE = Path(__file__).resolve().parents[2] / "sim" / "firmware" / "build" / "tests"
# remoteproc0 is a Cortex-M4, remoteproc1 a Cortex-M3.
CORES = ("cortex-m4", "cortex-m3")
X86_64_ELF = Path(os.path.realpath("/bin/true"))
_PR_SET_CHILD_SUBREAPER = 36


def firmware(kind: str, cpu: str, *, crash_after: int = 3) -> Path:
    return build_firmware(kind, cpu, FIRMWARE_CACHE, crash_after=crash_after)


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    with running_simulator(tmp_path_factory.mktemp("gateway"), CORES) as running:
        yield running


@pytest.fixture(scope="module")
def subreaper() -> Iterator[None]:
    """Adopt orphaned descendants, as the shim does, so supervisors can be waited for."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    yield
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@dataclass
class Shim:
    """Calls the runtime with the shim's arguments for one runc root and host root."""

    root: Path
    simulator: Simulator
    supervisors: dict[str, int] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    # False: no --log, as podman calls runtimes; the runtime's log is then its stderr.
    with_log: bool = True

    @property
    def env(self) -> Mapping[str, str]:
        host_root = {"SMARTER_RUNTIME_HOST_ROOT": str(self.simulator.root)}
        return {**os.environ, **host_root, **self.extra_env}

    def globals_for(self, bundle: Path) -> list[str]:
        log = bundle / "log.json"
        if not self.with_log:
            return ["--root", str(self.root)]
        return ["--root", str(self.root), "--log", str(log), "--log-format", "json"]

    def create(
        self,
        bundle: Path,
        container_id: str,
        *,
        stdout: int | None = None,
        stderr_fd: int | None = None,
    ) -> subprocess.CompletedProcess[str]:
        # stdio as the shim gives it: pipes or files the container keeps after create returns.
        out = stdout if stdout is not None else os.open(os.devnull, os.O_WRONLY)
        stderr = (
            stderr_fd
            if stderr_fd is not None
            else os.open(bundle / "stderr", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        )
        try:
            result = runtime(
                *self.globals_for(bundle),
                "create",
                "--bundle",
                str(bundle),
                "--pid-file",
                str(bundle / "init.pid"),
                container_id,
                env=self.env,
                capture_output=False,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=stderr,
            )
        finally:
            if stderr_fd is None:
                os.close(stderr)
            if stdout is None:
                os.close(out)
        if result.returncode == 0:
            self.supervisors[container_id] = int((bundle / "init.pid").read_text())
        return result

    def call(self, bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return runtime(*self.globals_for(bundle), *args, env=self.env)

    def state(self, bundle: Path, container_id: str) -> dict[str, object]:
        result = self.call(bundle, "state", container_id)
        assert result.returncode == 0, result.stderr
        parsed: dict[str, object] = json.loads(result.stdout)
        return parsed

    def wait_exit(self, container_id: str, timeout: float = 20.0) -> int:
        """The supervisor's exit status, reaped as the shim reaps it."""
        pid = self.supervisors.pop(container_id)
        deadline = time.monotonic() + timeout
        while True:
            reaped, status = os.waitpid(pid, os.WNOHANG)
            if reaped:
                return os.waitstatus_to_exitcode(status)
            assert time.monotonic() < deadline, f"supervisor {pid} did not exit"
            time.sleep(0.02)

    def cleanup(self) -> None:
        """Delete whatever a test left, by id, and reap its supervisors."""
        ours = self.root / "smarter-hybrid"
        for directory in list(ours.iterdir()) if ours.is_dir() else []:
            runtime("--root", str(self.root), "delete", "--force", directory.name, env=self.env)
        for container_id, pid in list(self.supervisors.items()):
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
            self.wait_exit(container_id)


@pytest.fixture
def shim(tmp_path: Path, simulator: Simulator, subreaper: None) -> Iterator[Shim]:
    root = tmp_path / "runc-root"
    root.mkdir()
    calls = Shim(root, simulator)
    try:
        yield calls
    finally:
        calls.cleanup()
        for index in range(len(CORES)):
            # A crashed core takes no `stop` (EINVAL): the runtime's route recovers it first.
            stop_core(core(simulator, index))


def core(simulator: Simulator, index: int) -> RemoteCore:
    found = core_by_id(simulator.host, f"remoteproc{index}")
    assert found is not None
    return found


def core_lock(simulator: Simulator, index: int) -> Path:
    return simulator.root / "run" / "smarter-hybrid" / "cores" / f"remoteproc{index}.lock"


def read_lines(fd: int, count: int, timeout: float = 20.0) -> list[str]:
    """`count` lines from `fd` (a pipe), waiting at most `timeout` seconds."""
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only got {data!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"stdout closed after {data!r}"
            data += chunk
    return data.decode().splitlines()[:count]


@contextlib.contextmanager
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    try:
        yield read_end, write_end
    finally:
        for fd in (read_end, write_end):
            with contextlib.suppress(OSError):
                os.close(fd)


def fw_bundle(make_bundle: MakeBundle, elf: Path | bytes | None, **options: object) -> Path:
    files = {} if elf is None else {"/firmware.elf": elf}
    return make_bundle(["/firmware.elf"], files, **options)
