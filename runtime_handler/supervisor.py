"""The process that stands for a firmware container: the shim's "container init".

`create` forks it; the shim reaps it and reports its exit status as the container's. It keeps
the stdio it was given (the shim's log pipes) and holds the core's reservation lock for as long
as it lives. Once `create` has its answer (`created` on the control FIFO), it gets the core ready
while the caller execs `start`: the firmware in place, the core's recovery disabled. It then
waits for `start`, starts the core, copies the core's console to stdout line by line, and exits
when the core stops:
128+signal when stopped by `kill`, 0 when stopped from outside, 1 when the core crashed,
vanished or would not start.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from runtime_handler import settings, state
from runtime_handler.bundle import resolve_in_rootfs
from runtime_handler.errors import RuntimeCallError
from smarter_common.deadline import Deadline
from smarter_common.hostroot import HostRoot
from smarter_common.logs import WARNING, RuncLogger, resolve_level
from smarter_common.remoteproc import (
    LIVE_STATES,
    STATE_CRASHED,
    STATE_OFFLINE,
    STATE_RUNNING,
    RemoteCore,
    announced_console,
    console_device,
    core_by_id,
    read_state,
    tty_class,
)
from smarter_common.remoteproc_control import (
    RemoteCoreError,
    disable_recovery,
    start_core,
    stop_core,
    wait_for_state,
)

EXIT_FAILED = 1
_POLL_SECONDS = 0.05
# Once the core is stopped nothing new is printed: what is left is what the console holds
# unread and what is still on its way through the tty layer, which a short quiet period covers.
_CONSOLE_QUIET_SECONDS = 0.02
_CONSOLE_DRAIN_LIMIT = 1.0
# The console's tty shows up a few ms after the core runs (on a board, once the firmware has
# announced its rpmsg channel); every ms waited for it is a ms of `start` (issue 16).
_CONSOLE_POLL_SECONDS = 0.005
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def start_timeout() -> float:
    return settings.current().start_timeout


class Supervisor:
    """Runs one firmware container from `start` to the core stopping."""

    def __init__(
        self, record: state.ContainerRecord, directory: Path, control_fd: int, host: HostRoot
    ) -> None:
        self.record = record
        self.directory = directory
        self.host = host
        self._control_fd = control_fd
        self._pending = b""
        self._signalled: int | None = None
        self._console: _ConsoleCopy | None = None
        self._log: Any = None
        # The core made ready before `start`, or why it could not be: said at `start`, as
        # the OCI runtime spec has `start` fail, not `create`'s answer that was already given.
        self._ready: RemoteCore | RuntimeCallError | RemoteCoreError | None = None

    def run(self) -> int:
        """Supervise until the container ends; the exit status of the container."""
        self._log = _logger(self.record)
        for signum in _HANDLED_SIGNALS:
            signal.signal(signum, self._on_signal)
        while True:
            command = self._next_command(timeout=None)
            if command is None:
                continue
            if command[0] == "kill":
                self._log.info("killed_before_start", signal=command[1])
                return self._finish(128 + command[1])
            if command[0] == "created" and self._ready is None:
                self._ready = self._prepare()
            if command[0] == "start":
                break
        try:
            core = self._start()
        except (RuntimeCallError, RemoteCoreError) as error:
            self._say_error(str(error))
            return self._finish(EXIT_FAILED, error=str(error))
        return self._watch(core)

    def _prepare(self) -> RemoteCore | RuntimeCallError | RemoteCoreError:
        """What `create` sets up and `start` does not need to wait for (issue 16): the
        firmware placed, the core's recovery disabled; the core, or why it cannot start."""
        record = self.record
        core = core_by_id(self.host, record.core)
        if core is None:
            return RemoteCoreError(f"{record.core} no longer exists")
        try:
            self._place_firmware()
        except RuntimeCallError as error:
            return error
        # The crash must end the container, so that the kubelet's restart policy decides.
        # `delete` puts the value back, whether the core ever ran or not.
        disable_recovery(core, recovery_saved_path(record), self._log)
        return core

    def _start(self) -> RemoteCore:
        record = self.record
        ready = self._ready if self._ready is not None else self._prepare()
        if not isinstance(ready, RemoteCore):
            raise ready
        core = ready
        if not core.exists():
            raise RemoteCoreError(f"{record.core} no longer exists")
        start_core(core, record.firmware_name)
        # Crashed means it did run: like a process that dies right after exec, the start
        # succeeded and the exit status tells the rest.
        current = wait_for_state(core, (STATE_RUNNING, STATE_CRASHED), start_timeout())
        if current not in (STATE_RUNNING, STATE_CRASHED):
            raise RemoteCoreError(
                f"{core.device_id} did not reach state running within {start_timeout():g}s"
                f" (state {current or 'unreadable'})",
                hint=f"raise {settings.START_TIMEOUT_ENV} if the core boots slowly",
            )
        console = self._open_console(core)
        record.status = state.STATUS_RUNNING
        record.started = state.now_rfc3339()
        state.save(self.directory, record)
        # Said once the record says running: `start` returns on the record, not on the log.
        if console is not None:
            self._log.info("console", core=core.device_id, device=str(console))
        self._log.info("core_started", core=core.device_id, firmware=record.firmware_name)
        return core

    def _open_console(self, core: RemoteCore) -> Path | None:
        """Copy the core's console once its tty shows up (on a board, only after the firmware
        has announced its rpmsg channel, numbered in announcement order); the tty's path."""
        path = wait_for_console(self.host, core, console_timeout())
        if path is None:
            self._log.warning("console_missing", core=core.device_id, waited=console_timeout())
            return None
        self._console = _ConsoleCopy(path, out_fd=1)
        self._console.open()
        self._console.start()
        return path

    def _place_firmware(self) -> None:
        """Copy the ELF where the loader looks, under our own name; never replace a file."""
        record = self.record
        source = resolve_in_rootfs(record.rootfs, record.entrypoint)
        if source is None:
            raise RuntimeCallError(f"firmware {record.entrypoint} vanished from {record.rootfs}")
        target = record.firmware_path
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(source, temporary)
            os.chmod(temporary, 0o644)
            # link() fails on an existing name, so another container's file is never replaced.
            os.link(temporary, target)
            # Recorded at once: `delete` removes the file only if we made it.
            record.firmware_placed = True
            state.save(self.directory, record)
        except FileExistsError:
            raise RuntimeCallError(
                f"firmware file {target} already exists and belongs to another container"
            ) from None
        except OSError as error:
            raise RuntimeCallError(f"cannot place firmware at {target}: {error.strerror}") from None
        finally:
            temporary.unlink(missing_ok=True)

    def _watch(self, core: RemoteCore) -> int:
        while True:
            command = self._next_command(timeout=_POLL_SECONDS)
            if command is not None and command[0] == "kill":
                return self._stop(core, command[1])
            if not core.exists():
                return self._fail(f"{core.device_id} vanished", core)
            current = read_state(core)
            if current in LIVE_STATES:
                continue
            if current == STATE_OFFLINE:
                self._log.info("core_stopped_from_outside", core=core.device_id)
                return self._finish(0)
            if current == STATE_CRASHED:
                return self._fail(
                    f"{core.device_id} crashed running {self.record.firmware_name}", core
                )
            # detached, suspended, deleted, invalid, or a state file that cannot be read: the
            # firmware is no longer ours to run, so the container ends and says why.
            found = f"is {current}" if current else "has no readable state"
            return self._fail(
                f"{core.device_id} {found} while running {self.record.firmware_name}", core
            )

    def _fail(self, message: str, core: RemoteCore) -> int:
        self._drain_console()
        self._say_error(message)
        return self._finish(EXIT_FAILED, error=message)

    def _say_error(self, message: str) -> None:
        """Why the container ends: on its stderr, and as an error entry of the `--log` file
        (without one, the log is that same stderr: said once)."""
        if self.record.log:
            self._log.error(message)
        _say(f"smarter-hybrid-runtime: {message}")

    def _stop(self, core: RemoteCore, signum: int) -> int:
        self._log.info("core_stopping", core=core.device_id, signal=signum)
        try:
            stop_core(core)
        except RemoteCoreError as error:
            self._log.error(str(error))
        return self._finish(128 + signum)

    def _finish(self, code: int, *, error: str | None = None) -> int:
        self._drain_console()
        self.record.status = state.STATUS_STOPPED
        self.record.exit_code = code
        self.record.error = error
        # `delete --force` may have removed the directory already.
        with contextlib.suppress(OSError):
            state.save(self.directory, self.record)
        self._log.info("container_exited", exit_code=code)
        return code

    def _drain_console(self) -> None:
        if self._console is not None:
            self._console.drain()
            self._console = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signalled = signum

    def _next_command(self, *, timeout: float | None) -> tuple[str, int] | None:
        """The next `created`, `start` or `kill <signal>` from the FIFO (or a signal we
        received)."""
        deadline = None if timeout is None else Deadline(timeout)
        while True:
            if self._signalled is not None:
                return ("kill", self._signalled)
            line, newline, rest = self._pending.partition(b"\n")
            if newline:
                self._pending = rest
                words = line.decode(errors="replace").split()
                if words == ["start"] or words == ["created"]:
                    return (words[0], 0)
                if len(words) == 2 and words[0] == "kill" and words[1].isdigit():
                    return ("kill", int(words[1]))
                continue
            wait = _POLL_SECONDS if deadline is None else deadline.remaining()
            if wait <= 0:
                return None
            try:
                ready, _, _ = select.select([self._control_fd], [], [], min(wait, _POLL_SECONDS))
            except InterruptedError:
                continue
            if ready:
                self._pending += os.read(self._control_fd, 512)


def recovery_saved_path(record: state.ContainerRecord) -> Path:
    """Where the core's `recovery` value from before any container is kept, beside its lock."""
    return recovery_saved_path_of(Path(record.lock_path))


def recovery_saved_path_of(lock_file: Path) -> Path:
    """Where the `recovery` value of the core whose lock is `lock_file` is kept."""
    return lock_file.with_suffix(".recovery")


def console_timeout() -> float:
    return settings.current().console_timeout


def wait_for_console(host: HostRoot, core: RemoteCore, timeout: float) -> Path | None:
    """The core's console tty, waiting up to `timeout` for sysfs to list it under the core;
    then the `/dev/ttyRPMSG<N>` guess, or None."""
    deadline = Deadline(timeout)
    while tty_class(host).is_dir():
        found = announced_console(host, core)
        if found is not None:
            return found
        if deadline.expired():
            break
        deadline.sleep(_CONSOLE_POLL_SECONDS)
    return console_device(host, core)


def _say(message: str) -> None:
    """A line on the container's stderr; straight to the descriptor, so that a lost reader
    leaves nothing buffered to fail again at exit."""
    with contextlib.suppress(OSError):
        os.write(2, (message + "\n").encode())


class _ConsoleCopy:
    """Copies a core's console to a file descriptor line by line, in a thread of its own.

    Reads block until the core prints, so the copy runs beside the supervisor's loop; a read
    that returns nothing (a console that is a plain file, or a closed peer) is retried.
    """

    def __init__(self, path: Path, *, out_fd: int) -> None:
        self.path = path
        self.out_fd = out_fd
        self._fd: int | None = None
        self._partial = b""
        self._lock = threading.Lock()
        self._last_data = time.monotonic()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Open before the core starts, so its first lines are not missed."""
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            self._fd = None
            return
        if os.isatty(self._fd):
            import termios
            import tty

            # Raw: no echo back to the core, no newline translation.
            tty.setraw(self._fd, termios.TCSANOW)

    def start(self) -> None:
        if self._fd is None:
            return
        self._thread = threading.Thread(target=self._copy, name="console", daemon=True)
        self._thread.start()

    def drain(self) -> None:
        """Let the last lines through (until the console is quiet), then flush a partial line."""
        if self._thread is None:
            return
        limit = Deadline(_CONSOLE_DRAIN_LIMIT)
        # The quiet period counts from the drain's start too: a chunk the copy has just read
        # but not yet emitted is given that long to come through.
        began = time.monotonic()
        while not limit.expired():
            with self._lock:
                quiet = time.monotonic() - max(self._last_data, began)
            if quiet >= _CONSOLE_QUIET_SECONDS and self._unread() == 0:
                break
            time.sleep(0.005)
        with self._lock:
            rest, self._partial = self._partial, b""
            if rest:
                self._emit(rest.rstrip(b"\r") + b"\n")
            self._thread = None

    def _unread(self) -> int:
        """Bytes the console holds that the copy has not read yet (0 when it cannot say)."""
        if self._fd is None:
            return 0
        import fcntl
        import termios

        buffer = bytearray(4)
        try:
            fcntl.ioctl(self._fd, termios.FIONREAD, buffer)
        except OSError:
            return 0
        return int.from_bytes(buffer, sys.byteorder)

    def _copy(self) -> None:
        assert self._fd is not None
        while True:
            try:
                chunk = os.read(self._fd, 4096)
            except OSError:
                return
            if not chunk:
                time.sleep(_POLL_SECONDS)
                continue
            with self._lock:
                if self._thread is None:
                    return
                self._last_data = time.monotonic()
                self._partial += chunk
                *lines, self._partial = self._partial.split(b"\n")
                for line in lines:
                    self._emit(line.rstrip(b"\r") + b"\n")

    def _emit(self, data: bytes) -> None:
        try:
            while data:
                written = os.write(self.out_fd, data)
                data = data[written:]
        except OSError:
            # Nobody reads the container's stdout any more; the core keeps running.
            pass


class _QuietStream:
    """The log's stream; a write that fails (the reader of our stderr is gone, a full disk)
    is dropped: losing the log must never lose the container."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()


def _log_stream(record: state.ContainerRecord) -> Any:
    """Where the runtime log goes: the `--log` file, else stderr."""
    if record.log:
        # The log file stays open for as long as the supervisor lives.
        return open(record.log, "a", buffering=1)
    return sys.stderr


def _logger(record: state.ContainerRecord, stream: Any = None) -> RuncLogger:
    """A logger writing runc's entries (`level`, `msg`, `time`) to the runtime log (`stream`,
    else the `--log` file, opened now: a log that cannot be written fails the supervisor
    before the core is touched).

    Stdlib only (smarter_common.logs' RuncLogger): the supervisor is resident for the life of
    its container, and structlog would add ~10 MB (asyncio) and ~30 ms after the core runs,
    which a `kill` sent right after `start` waits for (issue 16).

    Without `--log` (podman, a hand-run runtime) stderr is the container's own output, as
    for runc, which writes nothing of its own there: only warnings go there then. The reason
    a container ended is said once on stderr by the supervisor itself (`_say`).
    """
    if stream is None:
        stream = _log_stream(record)
    level = resolve_level(settings.current().log_level)
    if not record.log:
        level = max(level, WARNING)
    return RuncLogger(_QuietStream(stream), level=level, log_format=record.log_format).bind(
        logger="smarter-hybrid-runtime", container_id=record.id, core=record.core
    )
