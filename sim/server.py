"""`smarter-sim up` and `down`: build the host root, serve it until told to stop, clean up.

Threads: the main thread handles signals and shutdown; one thread runs the FUSE loop (whose
request threads block every signal); one spawner thread starts QEMU so that QEMU inherits a
normal signal mask; each QEMU has a relay thread for its UART.
"""

from __future__ import annotations

import os
import queue
import resource
import shutil
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Generic, TextIO, TypeVar

from sim import boards
from sim.channels import (
    CONSOLE_ADDRESS,
    DATA_ADDRESS,
    DataChannel,
    RpmsgDevice,
    TtyPublisher,
    rpmsg_bus_dir,
    tty_class_dir,
)
from sim.console import Console
from sim.core import SimCore
from sim.layout import DEVICE_NODES, Layout
from sim.mounts import mounts_under, unmount
from sim.qemu import INSTALL_HINT, qemu_binary
from sim.remoteproc_fs import RemoteprocFs
from smarter_common.deadline import Deadline, wait_until
from smarter_common.errors import SmarterError
from smarter_common.hostroot import HostRoot
from smarter_common.logs import get_logger
from smarter_common.procfs import command_line, process_alive
from smarter_common.remoteproc import encode_devicetree_strings, firmware_search_dirs

RUN_DIR = "/run/smarter-sim"
_MOUNT_TIMEOUT = 10.0
# How long the FUSE loop gets to act on a wake-up before it is woken again (it takes a few ms).
_WAKE_RETRY_S = 0.2
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

T = TypeVar("T")


class SimulatorError(SmarterError):
    """The simulator cannot start or stop."""


def run_dir(host: HostRoot) -> Path:
    return host.path(RUN_DIR)


def serve(root: Path, cpus: Sequence[str], board_name: str | None, out: TextIO) -> None:
    """Build the host root in `root`, print `ready` on `out`, serve until a stop signal."""
    if not cpus:
        raise SimulatorError("no cores to simulate", hint="give at least one --core cortex-m4")
    core_types = [boards.core_type(cpu) for cpu in cpus]
    board = boards.board(board_name)
    _check_prerequisites()
    root = root.resolve()
    if not root.is_dir():
        raise SimulatorError(f"the root {root} is not a directory", hint="create it first")
    host = HostRoot(root)
    _refuse_if_running(host)

    stop = threading.Event()
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _on_signal(stop))
    # QEMU aborts on a CPU lockup; a crashing firmware should not leave core dumps behind.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    log = get_logger("smarter-sim", root=str(root))
    layout = Layout(root)
    consoles: list[Console] = []
    cores: list[SimCore] = []
    spawner = _Spawner()
    fuse: _FuseThread | None = None
    try:
        state_dir = layout.mkdir(run_dir(host))
        layout.write(state_dir / "pid", f"{os.getpid()}\n".encode(), owned=True)
        _build_files(layout, host, board)
        spawner.start()
        publisher = TtyPublisher(host, first_index=len(core_types))

        def data_channel(index: int) -> DataChannel:
            device = RpmsgDevice(index, DATA_ADDRESS)
            directory = state_dir / "cores" / str(index)
            return DataChannel(device, publisher, core_id=f"remoteproc{index}", directory=directory)

        for index, core_type in enumerate(core_types):
            console = Console(_console_link(host, index))
            consoles.append(console)
            _publish_tty(layout, host, index)
            cores.append(
                SimCore(
                    index,
                    core_type,
                    console,
                    state_dir / "cores" / str(index),
                    lambda: firmware_search_dirs(host),
                    spawner.run,
                    data_channel,
                )
            )
        mount_point = layout.mkdir(host.remoteproc_class)
        fuse = _FuseThread(RemoteprocFs(cores), mount_point)
        fuse.start()
        fuse.wait_mounted(stop)
        if stop.is_set():
            return
        layout.write(state_dir / "ready", b"", owned=True)
        log.info("ready", cores=[core.core_type.cpu for core in cores], board=board.name)
        out.write("ready\n")
        out.flush()
        while not stop.wait(0.5):
            if not fuse.is_alive():
                raise SimulatorError(f"the FUSE filesystem at {mount_point} went away")
    finally:
        log.info("stopping")
        for core in cores:
            core.shutdown()
        if fuse is not None:
            fuse.unmount()
        spawner.stop()
        for console in consoles:
            console.close()
        layout.remove()
        log.info("stopped")


def down(root: Path, timeout: float = 30.0) -> bool:
    """Stop the simulator serving `root`; False if none was running.

    With none running, what a killed simulator left behind is cleared: its FUSE mount (which
    answers nothing but ENOTCONN) and its pid and ready files, so that `up` works again.
    """
    host = HostRoot(root.resolve())
    pid = _running_pid(host)
    if pid is None:
        for point in mounts_under(host.remoteproc_class):
            get_logger("smarter-sim").warning("stale_mount_unmounted", path=str(point))
            unmount(point)
        for name in ("ready", "pid"):
            (run_dir(host) / name).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not process_alive(pid), timeout):
        raise SimulatorError(
            f"the simulator (pid {pid}) did not stop within {timeout:.0f}s",
            hint=f"see its log; kill -9 {pid} and unmount {host.remoteproc_class}",
        )
    return True


def _check_prerequisites() -> None:
    if not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None:
        raise SimulatorError("FUSE is not available (/dev/fuse, fusermount3)", hint=INSTALL_HINT)
    qemu_binary()
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as error:
        raise SimulatorError(
            f"mfusepy cannot load libfuse: {error}", hint="pip install 'smarter-edge[sim]'"
        ) from error


def _refuse_if_running(host: HostRoot) -> None:
    pid = _running_pid(host)
    if pid is not None:
        raise SimulatorError(
            f"a simulator (pid {pid}) already serves {host.root}",
            hint=f"stop it with: smarter-sim down --root {host.root}",
        )
    stale = mounts_under(host.remoteproc_class)
    if stale:
        raise SimulatorError(
            f"{stale[0]} is still mounted from an earlier run",
            hint=f"clear it with: smarter-sim down --root {host.root}",
        )


def _running_pid(host: HostRoot) -> int | None:
    """The PID in the root's pid file if that process is a live simulator."""
    try:
        pid = int((run_dir(host) / "pid").read_text())
    except (OSError, ValueError):
        return None
    if b"up" not in (command_line(pid) or []) or not process_alive(pid):
        return None
    return pid


def _on_signal(stop: threading.Event) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return handler


def _build_files(layout: Layout, host: HostRoot, board: boards.Board) -> None:
    # Empty like the kernel's; when set, it is a host path searched before /lib/firmware.
    layout.write(host.firmware_search_path_param, b"\n")
    layout.write(host.devicetree_base / "model", board.model.encode() + b"\0")
    layout.write(host.devicetree_base / "compatible", encode_devicetree_strings(board.compatible))
    layout.mkdir(host.lib_firmware)
    for name, major, minor in DEVICE_NODES:
        layout.mknod(host.dev / name, major, minor)
    # Where rpmsg channels are published while the simulator runs (sim.channels).
    layout.mkdir(tty_class_dir(host))
    layout.mkdir(rpmsg_bus_dir(host))


def _console_link(host: HostRoot, index: int) -> Path:
    """Where core `index`'s console goes; a link left by a killed simulator is replaced."""
    link = host.dev / f"ttyRPMSG{index}"
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise SimulatorError(
            f"{link} exists and is not a console link", hint="remove it or use another root"
        )
    return link


def _publish_tty(layout: Layout, host: HostRoot, index: int) -> None:
    """`sys/class/tty/ttyRPMSG<N>/device`, resolving under `remoteproc<N>` as on a board, where
    that link is how a core's console is found (tty numbers follow channel announcements), and
    the console's rpmsg device in `sys/bus/rpmsg/devices`."""
    device = RpmsgDevice(index, CONSOLE_ADDRESS)
    layout.symlink(tty_class_dir(host) / f"ttyRPMSG{index}" / "device", device.class_link())
    layout.symlink(rpmsg_bus_dir(host) / device.name, device.bus_link())


@dataclass
class _Job(Generic[T]):
    work: Callable[[], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: T | None = None
    error: BaseException | None = None


class _Spawner:
    """Runs callables on one thread started by the main thread (see the module docstring)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[_Job[object] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="spawner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run(self, work: Callable[[], T]) -> T:
        job: _Job[T] = _Job(work)
        self._jobs.put(job)  # type: ignore[arg-type]
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def stop(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job.result = job.work()
            except BaseException as error:
                job.error = error
            job.done.set()


class _FuseThread:
    """The FUSE loop of the remoteproc filesystem, on its own thread."""

    def __init__(self, fs: RemoteprocFs, mount_point: Path) -> None:
        from sim.fuse import FuseLoop

        self.mount_point = mount_point
        self._mounted = threading.Event()
        self._error: BaseException | None = None
        fs.on_init.append(self._mounted.set)
        self._loop = FuseLoop(fs, mount_point)
        self._thread = threading.Thread(target=self._run, name="fuse", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._loop.serve()
        except BaseException as error:
            self._error = error

    def wait_mounted(self, stop: threading.Event) -> None:
        deadline = Deadline(_MOUNT_TIMEOUT)
        while not self._mounted.wait(0.05):
            if not self._thread.is_alive() or deadline.expired():
                raise SimulatorError(
                    f"cannot mount the remoteproc filesystem at {self.mount_point}: "
                    f"{self._error or 'timed out'}",
                    hint=INSTALL_HINT,
                )
            if stop.is_set():
                return

    def unmount(self) -> None:
        """End the loop, which unmounts; a plain unmount when the loop is not serving.

        Ending the loop first closes the FUSE connection, so an open file on the filesystem
        (a reader of `state`) neither blocks the unmount nor keeps the loop waiting for it.
        """
        log = get_logger("smarter-sim")
        deadline = Deadline(_MOUNT_TIMEOUT)
        while self._thread.is_alive() and not deadline.expired() and self._loop.end():
            self._thread.join(timeout=_WAKE_RETRY_S)
        if mounts_under(self.mount_point):
            try:
                unmount(self.mount_point)
            except OSError as error:
                log.error("unmount_failed", path=str(self.mount_point), error=str(error))
        self._thread.join(timeout=deadline.remaining())
        if self._thread.is_alive():
            log.error("fuse_loop_did_not_end", path=str(self.mount_point))
