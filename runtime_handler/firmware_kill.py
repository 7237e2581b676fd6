"""`kill` of a firmware container, and the write on the control FIFO that tells its supervisor.

Apart from firmware_commands because kill -> stopped is a goal (issue 16): the supervisor stops
the core, so `kill` needs only the container's record (runtime_handler.state), runc's reading of
the signal (runtime_handler.signals) and one write on the FIFO; firmware_commands' imports (core
selection, remoteproc, the supervisor, data channels) cost ~55 ms it has no use for.
"""

from __future__ import annotations

import os

from runtime_handler import signals, state
from runtime_handler.errors import RuntimeCallError

# No `typing` and no `pathlib` at run time: kill -> stopped pays for every import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from runtime_handler.runc_cli import Invocation


def load(invocation: Invocation) -> tuple[str, state.ContainerRecord]:
    """The directory and record of the container `invocation` names."""
    container_id = invocation.container_id or ""
    directory = state.container_dir(invocation.root, container_id)
    return directory, state.load(directory)


def send(directory: str | os.PathLike[str], message: str) -> None:
    """Write `message` (`start`, `kill <n>`) on the supervisor's control FIFO."""
    fifo = os.path.join(directory, state.CONTROL_FIFO)
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        # ENXIO: nobody has the FIFO open for reading, so the supervisor is gone.
        raise RuntimeCallError("container not running") from None
    try:
        os.write(fd, message.encode())
    finally:
        os.close(fd)


def end_unrecorded(directory: str, timeout: float) -> None:
    """End the supervisor of a container whose record cannot be read, so that its core's lock
    is freed and its core stopped: `kill 9` on the control FIFO, as for any container (the
    supervisor stops the core, saves its own record and exits); one that still reads the FIFO
    after `timeout` seconds is sent SIGKILL, which frees the lock it holds with the descriptor.
    """
    import contextlib
    import signal

    fifo = os.path.join(directory, state.CONTROL_FIFO)
    try:
        send(directory, f"kill {int(signal.SIGKILL)}\n")
    except RuntimeCallError:
        return  # nobody reads the FIFO: no supervisor
    if _wait_unread(fifo, timeout):
        return
    for pid in _fifo_holders(fifo):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if not _wait_unread(fifo, 5.0):
        raise RuntimeCallError(f"the process holding {fifo} does not end")


def _wait_unread(fifo: str, timeout: float) -> bool:
    """Whether `fifo` has lost its last reader within `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while _has_reader(fifo):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _has_reader(fifo: str) -> bool:
    """Whether a process has `fifo` open for reading (the supervisor holds it read-write)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # ENXIO: no reader; ENOENT: no FIFO
        return False
    os.close(fd)
    return True


def _fifo_holders(fifo: str) -> list[int]:
    """The processes holding `fifo` open, found by its inode among their descriptors."""
    wanted = os.stat(fifo)
    holders = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        fds = f"/proc/{name}/fd"
        try:
            for fd in os.listdir(fds):
                found = os.stat(f"{fds}/{fd}")
                if (found.st_dev, found.st_ino) == (wanted.st_dev, wanted.st_ino):
                    holders.append(int(name))
                    break
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return holders


def kill(invocation: Invocation) -> int:
    directory, record = load(invocation)
    signum = signals.parse(invocation.args[1] if len(invocation.args) > 1 else "")
    if not state.supervisor_alive(record) or record.status == state.STATUS_STOPPED:
        if invocation.switch("all"):
            # runc: `kill --all` signals whatever processes are left, none is not an error.
            return 0
        raise RuntimeCallError("container not running")
    if signals.effect(signum) == signals.STOPS_CORE:
        send(directory, f"kill {signum}\n")
    return 0
