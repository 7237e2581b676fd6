"""runc's command set for firmware containers: create, start, state, kill, delete, ps, and the rest.

Each command reads our record under `<--root>/smarter-hybrid/<id>/`, acts, and returns an exit
status; failures are RuntimeCallError, reported by the caller in runc's log format. The core is
driven through smarter_common.remoteproc_control; the container's process is the supervisor.

`start` is on the way from `create` to a running core (issue 16), and needs only the record,
the control FIFO and a poll: what `create` and `delete` alone use (core selection, remoteproc,
locks, the supervisor, data channels; ~50 ms of imports) is imported by those two only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

from runtime_handler import settings, state
from runtime_handler.errors import (
    ContainerNotFoundError,
    ContainerStateError,
    FirmwareRefusedError,
    RuntimeCallError,
    append_log,
    as_call_error,
)
from runtime_handler.firmware_kill import kill, load, send
from smarter_common.deadline import Deadline, wait_until

# No `typing`, `pathlib` or `dataclasses` at run time for `start`: see the docstring.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from runtime_handler.bundle import Bundle
    from runtime_handler.core_select import CoreView
    from runtime_handler.runc_cli import Invocation
    from smarter_common.firmware_elf import ElfFacts
    from smarter_common.hostroot import HostRoot
    from smarter_common.locks import FileLock

FIRMWARE_PREFIX = "smarter-"
# runc 1.1's words (libcontainer's ErrExist), which the shim shows the user.
DUPLICATE_ID = "container with given ID already exists"
_LOCKS_SUBDIR = "smarter-hybrid/cores"
_WAIT_POLL = 0.01
# `start` returns as soon as the record says running: a poll of one small file, every 2 ms
# for the ~100 ms a core takes, costs little and saves ~4 ms on average (issue 16).
_START_POLL = 0.002


def lock_path(host: HostRoot, device_id: str) -> Path:
    """The reservation lock of a core: under the host's /run, shared by every --root."""
    return host.run / _LOCKS_SUBDIR / f"{device_id}.lock"


def observe_cores(host: HostRoot) -> list[CoreView]:
    from runtime_handler.core_select import CoreView
    from smarter_common.locks import is_locked
    from smarter_common.remoteproc import discover_cores

    views = []
    for core in discover_cores(host):
        views.append(
            CoreView(
                device_id=core.device_id,
                cpu=core.cpu,
                state=core.state(),
                reserved=is_locked(lock_path(host, core.device_id)),
                firmware=core.firmware(),
            )
        )
    return views


def create(invocation: Invocation, bundle: Bundle, facts: ElfFacts) -> int:
    """Reserve a core, record the container, fork its supervisor and write the pid file."""
    from pathlib import Path

    from runtime_handler.core_select import BoardView, check_board
    from smarter_common.hostroot import HostRoot
    from smarter_common.remoteproc import read_board

    container_id = invocation.container_id
    if not container_id:
        raise RuntimeCallError('"create" requires exactly 1 argument')
    directory = Path(state.container_dir(invocation.root, container_id))
    if bundle.terminal:
        raise FirmwareRefusedError(
            "firmware containers have no terminal: set tty: false (process.terminal)"
        )
    _claim_id(invocation.root, directory)
    try:
        configured = settings.current()
        # Checked before any core is touched: a bad timeout must not strand a started core.
        configured.check()
        host = HostRoot(Path(configured.host_root))
        board = read_board(host)
        check_board(bundle.board, BoardView(board.model, board.compatible))
        core, lock = _reserve(host, facts, bundle.requested_core)
        try:
            return _create_reserved(invocation, bundle, host, core, lock, directory)
        finally:
            # The supervisor holds the lock through its inherited descriptor; closing ours
            # without unlocking leaves the reservation with it (or drops it with no supervisor).
            os.close(lock.fileno)
    except BaseException:
        _remove_tree(directory)
        raise


def _remove_tree(directory: str | os.PathLike[str]) -> None:
    import shutil

    shutil.rmtree(directory, ignore_errors=True)


def _claim_id(runtime_root: str, directory: Path) -> None:
    """Make the container's directory: mkdir is atomic, so of two creates with one id, one
    wins and the other is refused in runc's words; a runc container of that id also counts."""
    if os.path.exists(os.path.join(runtime_root, directory.name)):
        raise RuntimeCallError(DUPLICATE_ID)
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        raise RuntimeCallError(DUPLICATE_ID) from None


def _reserve(host: HostRoot, facts: ElfFacts, requested: str | None) -> tuple[CoreView, FileLock]:
    """Choose a core and take its lock; a core another `create` reserves meanwhile is skipped."""
    import dataclasses

    from runtime_handler.core_select import choose_core
    from smarter_common.errors import LockBusyError
    from smarter_common.locks import FileLock

    taken: set[str] = set()
    while True:
        cores = [
            dataclasses.replace(view, reserved=True) if view.device_id in taken else view
            for view in observe_cores(host)
        ]
        core = choose_core(facts, cores, requested)
        lock = FileLock(lock_path(host, core.device_id))
        lock.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except LockBusyError:
            if requested is not None:
                raise FirmwareRefusedError(
                    f"{core.device_id} is reserved by another container"
                ) from None
            taken.add(core.device_id)
            continue
        return core, lock


def _create_reserved(
    invocation: Invocation,
    bundle: Bundle,
    host: HostRoot,
    core: CoreView,
    lock: FileLock,
    directory: Path,
) -> int:
    from pathlib import Path

    from runtime_handler import data_channels
    from smarter_common.atomic import write_atomic
    from smarter_common.remoteproc import IDLE_STATES, core_by_id

    container_id = directory.name
    current = core_by_id(host, core.device_id)
    if current is None or current.state() not in IDLE_STATES:
        raise FirmwareRefusedError(f"{core.device_id} started running while it was being reserved")
    entrypoint = bundle.entrypoint or ""
    if not entrypoint.startswith("/"):
        entrypoint = os.path.join(bundle.cwd, entrypoint)
    record = state.ContainerRecord(
        id=container_id,
        bundle=bundle.path,
        rootfs=bundle.rootfs,
        entrypoint=entrypoint,
        core=core.device_id,
        firmware_name=f"{FIRMWARE_PREFIX}{container_id}.elf",
        firmware_dir=str(_placement_dir(host)),
        lock_path=str(lock.path),
        host_root=str(host.root),
        log=os.path.abspath(invocation.log) if invocation.log else None,
        log_format=invocation.log_format,
        oci_version=bundle.oci_version,
        created=state.now_rfc3339(),
        annotations=bundle.annotations,
    )
    try:
        control = directory / state.CONTROL_FIFO
        os.mkfifo(control, 0o600)
        # Read-write, so the FIFO never reports end-of-file while the supervisor waits on it.
        control_fd = os.open(control, os.O_RDWR | os.O_CLOEXEC)
        try:
            pid = _fork_supervisor(record, directory, control_fd, host)
            try:
                record.pid = pid
                record.pid_start = _wait_start_time(pid)
                state.save(directory, record)
                pid_file = invocation.option("pid-file")
                if pid_file:
                    write_atomic(Path(os.path.abspath(pid_file)), str(pid))
                # The pod's sidecars may be given this firmware's data channels from now on.
                data_channels.mark_pod(invocation.root, record)
                # Last, once nothing here can fail or save the record again: the supervisor
                # places the firmware while our caller execs `start` (issue 16).
                os.write(control_fd, b"created\n")
            except BaseException:
                os.kill(pid, signal.SIGKILL)
                raise
        finally:
            os.close(control_fd)
    except BaseException:
        data_channels.unmark_pod(invocation.root, record)
        _remove_tree(directory)
        raise
    return 0


def _placement_dir(host: HostRoot) -> Path:
    from smarter_common.errors import HostPathError
    from smarter_common.remoteproc import firmware_dir

    try:
        return firmware_dir(host)
    except HostPathError as error:
        raise RuntimeCallError(f"cannot place firmware: {error.message}", hint=error.hint) from None


def _fork_supervisor(
    record: state.ContainerRecord, directory: Path, control_fd: int, host: HostRoot
) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    # The child never returns into create's code, whatever is raised here or while it says
    # so (a lost stderr raises on every write and flush): create's cleanup would delete the
    # record of a container whose core may be running.
    code = 1
    try:
        code = _supervise(record, directory, control_fd, host)
    finally:
        os._exit(code)


def _supervise(
    record: state.ContainerRecord, directory: Path, control_fd: int, host: HostRoot
) -> int:
    from runtime_handler.supervisor import Supervisor
    from smarter_common.procfs import process_start_time

    try:
        os.setsid()
        os.chdir("/")
        record.pid = os.getpid()
        record.pid_start = process_start_time(record.pid)
        return Supervisor(record, directory, control_fd, host).run()
    except BaseException as error:  # the supervisor's last word: never raised on
        _supervisor_failed(record, directory, error)
        return 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()


def _supervisor_failed(
    record: state.ContainerRecord, directory: Path, error: BaseException
) -> None:
    """Keep the container's record (stopped, with the reason) and say why, where we can."""
    message = f"supervisor of {record.id} failed: {as_call_error(error)}"
    record.status = state.STATUS_STOPPED
    record.exit_code = 1
    record.error = message
    with contextlib.suppress(OSError):
        state.save(directory, record)
    with contextlib.suppress(OSError, ValueError):
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    # The shim shows the runtime log's last error, so the failure is said there too.
    with contextlib.suppress(OSError, ValueError):
        append_log(record.log, message, level="error", log_format=record.log_format)


def _wait_start_time(pid: int) -> str:
    from smarter_common.procfs import process_start_time

    deadline = Deadline(2.0)
    started = process_start_time(pid)
    while not started and not deadline.expired():
        deadline.sleep(_WAIT_POLL)
        started = process_start_time(pid)
    return started


def start(invocation: Invocation) -> int:
    directory, record = load(invocation)
    status = state.current_status(record)
    if status == state.STATUS_RUNNING:
        raise RuntimeCallError("cannot start an already running container")
    if status == state.STATUS_STOPPED:
        raise RuntimeCallError("cannot start a container that has stopped")
    send(directory, "start\n")
    deadline = Deadline(settings.current().start_timeout + 5.0)
    while not deadline.expired():
        record = state.load(directory)
        # Started counts even if the firmware has already ended: its exit is the container's.
        if record.status == state.STATUS_RUNNING or record.started:
            return 0
        if record.status == state.STATUS_STOPPED:
            raise RuntimeCallError(record.error or f"container exited with {record.exit_code}")
        if not state.supervisor_alive(record):
            raise RuntimeCallError("container process exited before the core started")
        deadline.sleep(_START_POLL)
    raise RuntimeCallError(f"{record.core} did not start in time")


def show_state(invocation: Invocation) -> int:
    _, record = load(invocation)
    print(json.dumps(state.oci_state(record), indent=2))
    return 0


def delete(invocation: Invocation) -> int:
    """Stop the core if it still runs our firmware, release it, remove every file we made."""
    container_id = invocation.container_id or ""
    directory = state.container_dir(invocation.root, container_id)
    try:
        record = state.load(directory)
    except ContainerNotFoundError:
        _remove_tree(directory)
        return 0
    except ContainerStateError:
        if not invocation.switch("force"):
            raise
        return _delete_unreadable(invocation, directory)
    return _delete_recorded(invocation, directory, record)


def _delete_recorded(invocation: Invocation, directory: str, record: state.ContainerRecord) -> int:
    from runtime_handler import data_channels

    container_id = record.id
    if state.supervisor_alive(record):
        if record.status == state.STATUS_RUNNING and not invocation.switch("force"):
            raise RuntimeCallError(
                f"cannot delete container {container_id} that is not stopped: running"
            )
        _end_supervisor(directory, record)
        # What the supervisor did before it ended (placing the firmware) is in its last save.
        record = state.load(directory)
    _release_core(record)
    if record.firmware_placed:
        record.firmware_path.unlink(missing_ok=True)
    data_channels.unmark_pod(invocation.root, record)
    _remove_tree(directory)
    return 0


def _delete_unreadable(invocation: Invocation, directory: str) -> int:
    """`delete --force` of a container whose record cannot be read (runc refuses it, and the
    kubelet would retry forever): its supervisor is ended through the control FIFO, which
    frees the core; the supervisor's last save may make the record whole for an ordinary
    delete, else the container's directory and its pod's mark of it are removed, and a core
    still running its firmware (a supervisor killed by SIGKILL stops nothing) is stopped."""
    from runtime_handler.firmware_kill import end_unrecorded
    from smarter_common.remoteproc_control import STOP_TIMEOUT

    container_id = invocation.container_id or ""
    end_unrecorded(directory, STOP_TIMEOUT + 5.0)
    try:
        record = state.load(directory)
    except (ContainerNotFoundError, ContainerStateError):
        pass
    else:
        return _delete_recorded(invocation, directory, record)
    _unmark_unrecorded(invocation.root, container_id)
    _remove_tree(directory)
    _stop_unrecorded_firmware(f"{FIRMWARE_PREFIX}{container_id}.elf")
    return 0


def _unmark_unrecorded(runtime_root: str, container_id: str) -> None:
    """Remove the pod's mark of a container whose record (and so whose pod) is unknown."""
    from pathlib import Path

    from runtime_handler import route

    pods = Path(state.containers_dir(runtime_root)) / route.PODS_DIRECTORY
    for mark in pods.glob(f"*/{container_id}"):
        mark.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # ENOTEMPTY: the pod has other firmware
            mark.parent.rmdir()
    with contextlib.suppress(OSError):
        pods.rmdir()


def _stop_unrecorded_firmware(firmware_name: str) -> None:
    """Stop every core running (or crashed running) `firmware_name`, and put its recovery
    back, as `delete` does for a container whose record says which core it has.

    Which core a container created but never started had is not known: its supervisor may
    have disabled that core's recovery before it was killed. So the recovery kept for every
    other core that nobody holds is put back too, if the core is offline: recovery does
    nothing on an offline core, and the next container on it keeps the value again.
    """
    from pathlib import Path

    from runtime_handler.supervisor import recovery_saved_path_of
    from smarter_common.hostroot import HostRoot
    from smarter_common.remoteproc import STATE_CRASHED, STATE_RUNNING, discover_cores

    host = HostRoot(Path(settings.current().host_root))
    for core in discover_cores(host):
        lock_file = lock_path(host, core.device_id)
        if core.firmware() == firmware_name and core.state() in (STATE_RUNNING, STATE_CRASHED):
            _free_core(host, core.device_id, firmware_name, lock_file)
        elif recovery_saved_path_of(lock_file).exists():
            _free_core(host, core.device_id, firmware_name, lock_file, wait=0)


def _end_supervisor(directory: str, record: state.ContainerRecord) -> None:
    from smarter_common.remoteproc_control import STOP_TIMEOUT

    with contextlib.suppress(RuntimeCallError):
        send(directory, f"kill {int(signal.SIGKILL)}\n")
    if _wait_gone(record, STOP_TIMEOUT + 5.0):
        return
    os.kill(record.pid, signal.SIGKILL)
    _wait_gone(record, 5.0)


def _wait_gone(record: state.ContainerRecord, timeout: float) -> bool:
    return wait_until(lambda: not state.supervisor_alive(record), timeout, _WAIT_POLL)


def _release_core(record: state.ContainerRecord) -> None:
    """Stop the core when it still runs our firmware and nobody else holds it."""
    from pathlib import Path

    from smarter_common.hostroot import HostRoot

    host = HostRoot(Path(record.host_root))
    _free_core(host, record.core, record.firmware_name, Path(record.lock_path))


def _free_core(
    host: HostRoot, device_id: str, firmware_name: str, lock_file: Path, *, wait: float = 1.0
) -> None:
    """Under the core's lock (unless someone else holds it after `wait` seconds): stop it if
    it runs `firmware_name`, then put back the recovery value kept beside the lock."""
    from runtime_handler.supervisor import recovery_saved_path_of
    from smarter_common.errors import LockBusyError
    from smarter_common.locks import FileLock
    from smarter_common.remoteproc import STATE_CRASHED, STATE_RUNNING, core_by_id
    from smarter_common.remoteproc_control import RemoteCoreError, restore_recovery, stop_core

    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=wait)
    except (LockBusyError, FileNotFoundError):
        return
    try:
        core = core_by_id(host, device_id)
        ours = core is not None and core.firmware() == firmware_name
        if core is not None and ours and core.state() in (STATE_RUNNING, STATE_CRASHED):
            with contextlib.suppress(RemoteCoreError):
                stop_core(core)
        if core is not None:
            restore_recovery(core, recovery_saved_path_of(lock_file))
    finally:
        lock.release()


def ps(invocation: Invocation) -> int:
    _, record = load(invocation)
    pids = [record.pid] if state.current_status(record) != state.STATUS_STOPPED else []
    if invocation.option("format") == "json":
        print(json.dumps(pids))
    else:
        print("PID   CMD")
        for pid in pids:
            print(f"{pid:<5} smarter-hybrid-runtime supervisor {record.core}")
    return 0


def update(invocation: Invocation) -> int:
    """Resource limits do not apply to a remote core; accept them so pod updates succeed."""
    load(invocation)
    return 0


def unsupported(invocation: Invocation) -> int:
    load(invocation)
    raise RuntimeCallError(
        f"{invocation.command} is not supported for firmware container {invocation.container_id}"
    )


COMMANDS: dict[str, Callable[[Invocation], int]] = {
    "start": start,
    "state": show_state,
    "kill": kill,
    "delete": delete,
    "ps": ps,
    "update": update,
    "pause": unsupported,
    "resume": unsupported,
    "exec": unsupported,
    "events": unsupported,
    "checkpoint": unsupported,
    "restore": unsupported,
}
