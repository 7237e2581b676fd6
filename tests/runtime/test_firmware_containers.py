"""Firmware containers on the simulated gateway, driven exactly as containerd's runc shim does.

The test process is a child subreaper like the shim, so it reaps each container's supervisor
and sees its exit status. Firmware is built by the tests with arm-none-eabi-gcc and runs in QEMU.
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sim.firmware_build import build_firmware
from smarter_common.locks import is_locked
from smarter_common.remoteproc import RemoteCore, core_by_id
from tests.simulator import Simulator, process_alive, running_simulator

from .conftest import MakeBundle, log_messages, runtime

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

    @property
    def env(self) -> Mapping[str, str]:
        return {**os.environ, "SMARTER_HOST_ROOT": str(self.simulator.root)}

    def globals_for(self, bundle: Path) -> list[str]:
        log = bundle / "log.json"
        return ["--root", str(self.root), "--log", str(log), "--log-format", "json"]

    def create(
        self, bundle: Path, container_id: str, *, stdout: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        # stdio as the shim gives it: pipes or files the container keeps after create returns.
        out = stdout if stdout is not None else os.open(os.devnull, os.O_WRONLY)
        stderr = os.open(bundle / "stderr", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
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
            found = core(simulator, index)
            if found.state() != "offline":
                with contextlib.suppress(OSError):
                    (found.sysfs / "state").write_text("stop")


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


def test_full_cycle_runs_firmware_and_copies_its_console(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    m4 = core(simulator, 0)
    with pipe() as (read_end, write_end):
        created = shim.create(bundle, "fw1", stdout=write_end)
        os.close(write_end)
        assert created.returncode == 0, log_messages(bundle / "log.json")
        pid = shim.supervisors["fw1"]
        assert shim.state(bundle, "fw1") == {
            "ociVersion": shim.state(bundle, "fw1")["ociVersion"],
            "id": "fw1",
            "pid": pid,
            "status": "created",
            "bundle": str(bundle),
            "rootfs": str(bundle / "rootfs"),
            "created": shim.state(bundle, "fw1")["created"],
            "annotations": {},
            "owner": "",
        }
        assert m4.state() == "offline"
        assert is_locked(core_lock(simulator, 0))

        assert shim.call(bundle, "start", "fw1").returncode == 0
        assert m4.state() == "running"
        assert m4.firmware() == "smarter-fw1.elf"
        assert (simulator.host.lib_firmware / "smarter-fw1.elf").is_file()
        assert read_lines(read_end, 2) == ["hello from cortex-m4 1", "hello from cortex-m4 2"]
        assert shim.state(bundle, "fw1")["status"] == "running"

        assert shim.call(bundle, "kill", "fw1", "TERM").returncode == 0
        assert shim.wait_exit("fw1") == 128 + signal.SIGTERM
    assert m4.state() == "offline"
    stopped = shim.state(bundle, "fw1")
    assert (stopped["status"], stopped["pid"]) == ("stopped", 0)

    assert shim.call(bundle, "delete", "fw1").returncode == 0
    assert not (shim.root / "smarter-hybrid" / "fw1").exists()
    assert not (simulator.host.lib_firmware / "smarter-fw1.elf").exists()
    assert not is_locked(core_lock(simulator, 0))
    assert shim.call(bundle, "state", "fw1").returncode == 1
    assert log_messages(bundle / "log.json") == ["container does not exist"]


def test_crashing_firmware_ends_the_container_with_a_failure(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("crash", "cortex-m4", crash_after=1))
    with pipe() as (read_end, write_end):
        assert shim.create(bundle, "crashy", stdout=write_end).returncode == 0
        os.close(write_end)
        assert shim.call(bundle, "start", "crashy").returncode == 0
        assert read_lines(read_end, 2) == ["hello from cortex-m4 1", "crashing now"]
        assert shim.wait_exit("crashy") == 1
    assert core(simulator, 0).state() == "crashed"
    assert (
        "smarter-hybrid-runtime: remoteproc0 crashed running smarter-crashy.elf"
        in (bundle / "stderr").read_text()
    )
    assert log_messages(bundle / "log.json") == ["remoteproc0 crashed running smarter-crashy.elf"]
    assert shim.state(bundle, "crashy")["status"] == "stopped"

    assert shim.call(bundle, "delete", "crashy").returncode == 0
    assert core(simulator, 0).state() == "offline"
    assert not (simulator.host.lib_firmware / "smarter-crashy.elf").exists()


def test_delete_force_stops_a_running_core(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(
        make_bundle, firmware("hello", "cortex-m3"), env=["SMARTER_RPROC=remoteproc1"]
    )
    assert shim.create(bundle, "fw3").returncode == 0
    assert shim.call(bundle, "start", "fw3").returncode == 0
    assert core(simulator, 1).state() == "running"

    refused = shim.call(bundle, "delete", "fw3")
    assert refused.returncode == 1
    assert log_messages(bundle / "log.json") == [
        "cannot delete container fw3 that is not stopped: running"
    ]

    assert shim.call(bundle, "delete", "--force", "fw3").returncode == 0
    assert shim.wait_exit("fw3") == 128 + signal.SIGKILL
    assert core(simulator, 1).state() == "offline"
    assert not (shim.root / "smarter-hybrid" / "fw3").exists()
    assert not (simulator.host.lib_firmware / "smarter-fw3.elf").exists()
    assert not is_locked(core_lock(simulator, 1))


def test_kill_before_start_never_starts_the_core(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    assert shim.create(bundle, "early").returncode == 0
    assert shim.call(bundle, "kill", "early", "KILL").returncode == 0
    assert shim.wait_exit("early") == 128 + signal.SIGKILL
    assert core(simulator, 0).state() == "offline"
    assert shim.call(bundle, "delete", "early").returncode == 0
    assert not is_locked(core_lock(simulator, 0))


def test_second_container_for_a_reserved_core_is_refused(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    hello = firmware("hello", "cortex-m4")
    first = fw_bundle(make_bundle, hello, env=["SMARTER_RPROC=remoteproc0"])
    assert shim.create(first, "owner").returncode == 0
    second = fw_bundle(make_bundle, hello, env=["SMARTER_RPROC=remoteproc0"])

    refused = shim.create(second, "intruder")

    assert refused.returncode == 1
    assert log_messages(second / "log.json") == ["remoteproc0 is reserved by another container"]
    assert not (shim.root / "smarter-hybrid" / "intruder").exists()
    assert not (second / "init.pid").exists()
    assert is_locked(core_lock(simulator, 0)), "the first container keeps its reservation"


def test_core_running_outside_any_container_is_refused(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    m4 = core(simulator, 0)
    (simulator.host.lib_firmware / "other.elf").write_bytes(
        firmware("hello", "cortex-m4").read_bytes()
    )
    (m4.sysfs / "firmware").write_text("other.elf")
    (m4.sysfs / "state").write_text("start")
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))

    refused = shim.create(bundle, "late")

    assert refused.returncode == 1
    [message] = log_messages(bundle / "log.json")
    assert message.startswith("no free core runs /firmware.elf (built for ARM v7E-M): ")
    assert "remoteproc0 is running firmware other.elf, expected offline" in message
    assert "remoteproc1: /firmware.elf is built for ARM v7E-M, but the core is a cortex-m3" in (
        message
    )
    assert m4.firmware() == "other.elf"
    assert_nothing_left(shim, simulator, bundle, "late")


def assert_nothing_left(shim: Shim, simulator: Simulator, bundle: Path, container_id: str) -> None:
    assert not (shim.root / "smarter-hybrid" / container_id).exists()
    assert not (bundle / "init.pid").exists()
    assert not (simulator.host.lib_firmware / f"smarter-{container_id}.elf").exists()
    for index in range(len(CORES)):
        assert not is_locked(core_lock(simulator, index))


REFUSALS: dict[str, tuple[Callable[[], Path | bytes | None], list[str], str]] = {
    "wrong-core": (
        lambda: firmware("hello", "cortex-m33"),
        ["SMARTER_RPROC=remoteproc0"],
        "remoteproc0: /firmware.elf is built for ARM v8-M.main, but the core is a"
        " cortex-m4, which runs v6-M, v6S-M, v7-M, v7E-M"
        " (rebuild the firmware for this core or request a core of the right type)",
    ),
    "x86-64": (
        lambda: X86_64_ELF,
        [],
        "/firmware.elf is a 64-bit X86_64 ELF, not microcontroller firmware"
        " (build it for a Cortex-M or Cortex-R core, e.g. arm-none-eabi-gcc -mcpu=cortex-m4)",
    ),
    "not-elf": (
        lambda: b"#!/bin/sh\necho not firmware\n",
        [],
        "firmware container entrypoint /firmware.elf is not an ELF file"
        " (build the firmware with arm-none-eabi-gcc -mcpu=<core> and package the .elf)",
    ),
    "missing-entrypoint": (
        lambda: None,
        [],
        "firmware container entrypoint /firmware.elf does not exist in the root filesystem"
        " {rootfs} (a firmware image holds its ELF at /firmware.elf and names it as entrypoint)",
    ),
    "missing-core": (
        lambda: firmware("hello", "cortex-m4"),
        ["SMARTER_RPROC=remoteproc9"],
        "SMARTER_RPROC=remoteproc9 names a core that does not exist;"
        " this host's cores: remoteproc0, remoteproc1"
        " (the device manager sets SMARTER_RPROC; request smarter-devices/rprocN)",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal_says_why_and_leaves_nothing(
    case: str, shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    elf, env, expected = REFUSALS[case]
    bundle = fw_bundle(make_bundle, elf(), env=env)

    refused = shim.create(bundle, f"bad-{case}")

    assert refused.returncode == 1
    expected_message = expected.format(rootfs=bundle / "rootfs")
    assert log_messages(bundle / "log.json") == [expected_message]
    assert expected_message in (bundle / "stderr").read_text()
    assert_nothing_left(shim, simulator, bundle, f"bad-{case}")
    assert [core(simulator, i).state() for i in range(len(CORES))] == ["offline", "offline"]


def test_firmware_for_another_board_is_refused(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(
        make_bundle,
        firmware("hello", "cortex-m4"),
        annotations={"smarter-edge.io/board": "imx8mm-evk"},
    )
    refused = shim.create(bundle, "elsewhere")
    assert refused.returncode == 1
    assert log_messages(bundle / "log.json") == [
        "firmware is for board 'imx8mm-evk', but this board is 'smarter-edge simulated gateway'"
        " (smarter-edge,sim) (schedule the pod on a node with that board (nodeSelector)"
        " or rebuild the firmware)"
    ]
    assert_nothing_left(shim, simulator, bundle, "elsewhere")


def test_without_smarter_rproc_each_container_gets_the_next_free_core(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    m3_firmware = firmware("hello", "cortex-m3")
    first = fw_bundle(make_bundle, m3_firmware)
    second = fw_bundle(make_bundle, m3_firmware)
    assert shim.create(first, "one").returncode == 0
    assert shim.create(second, "two").returncode == 0
    assert shim.call(first, "start", "one").returncode == 0
    assert shim.call(second, "start", "two").returncode == 0
    assert core(simulator, 0).firmware() == "smarter-one.elf"
    assert core(simulator, 1).firmware() == "smarter-two.elf"
    assert [core(simulator, i).state() for i in range(len(CORES))] == ["running", "running"]


def test_run_is_refused_for_firmware(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    result = shim.call(bundle, "run", "--bundle", str(bundle), "--detach", "norun")
    assert result.returncode == 1
    assert log_messages(bundle / "log.json") == [
        "run is not supported for firmware containers: use create, then start"
    ]
    assert_nothing_left(shim, simulator, bundle, "norun")


def test_core_stopped_from_outside_ends_the_container_cleanly(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    assert shim.create(bundle, "outside").returncode == 0
    assert shim.call(bundle, "start", "outside").returncode == 0
    (core(simulator, 0).sysfs / "state").write_text("stop")
    assert shim.wait_exit("outside") == 0
    assert shim.state(bundle, "outside")["status"] == "stopped"


def test_start_never_replaces_a_firmware_file_it_did_not_make(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    squatter = simulator.host.lib_firmware / "smarter-clash.elf"
    squatter.write_bytes(b"someone else's\n")
    try:
        bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
        assert shim.create(bundle, "clash").returncode == 0

        started = shim.call(bundle, "start", "clash")

        message = f"firmware file {squatter} already exists and belongs to another container"
        assert started.returncode == 1
        assert started.stderr.strip() == message
        assert shim.wait_exit("clash") == 1
        assert squatter.read_bytes() == b"someone else's\n"
        assert core(simulator, 0).state() == "offline"
        assert shim.call(bundle, "delete", "clash").returncode == 0
        assert squatter.read_bytes() == b"someone else's\n"
        assert not is_locked(core_lock(simulator, 0))
    finally:
        squatter.unlink()


def test_terminal_is_refused_for_firmware(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = True
    (bundle / "config.json").write_text(json.dumps(config))

    refused = shim.create(bundle, "tty")

    assert refused.returncode == 1
    assert log_messages(bundle / "log.json") == [
        "firmware containers have no terminal: set tty: false (process.terminal)"
    ]
    assert_nothing_left(shim, simulator, bundle, "tty")


def test_firmware_that_crashes_at_once_has_started_and_exits_non_zero(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("crash", "cortex-m4", crash_after=0))
    with pipe() as (read_end, write_end):
        assert shim.create(bundle, "sudden", stdout=write_end).returncode == 0
        os.close(write_end)
        started = shim.call(bundle, "start", "sudden")
        assert started.returncode == 0, started.stderr
        assert read_lines(read_end, 1) == ["crashing now"]
        assert shim.wait_exit("sudden") == 1
    assert shim.call(bundle, "delete", "sudden").returncode == 0
    assert core(simulator, 0).state() == "offline"
