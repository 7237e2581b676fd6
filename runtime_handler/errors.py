"""Errors as runc reports them: a line in the `--log` file, the message on stderr, exit 1.

The runc shim shows the user the last `error` entry of `<bundle>/log.json`, written in runc's
JSON log format (`{"level":"error","msg":...,"time":...}`) or logrus' text format: the `runc`
profile of smarter_common.logs, whose `runc_entry` is stdlib-only, imported only to refuse
(refusals happen on the exec'd path). Every failure is exit 1, as for runc.
"""

from __future__ import annotations

import os
import sys

from smarter_common.errors import SmarterError


class RuntimeCallError(SmarterError):
    """A runtime command cannot be carried out; the message is what the shim shows the user."""


class ContainerNotFoundError(RuntimeCallError):
    def __init__(self) -> None:
        super().__init__("container does not exist")


class ContainerStateError(RuntimeCallError):
    """A firmware container's record (state.json) cannot be read as one: cut short by a crash
    or a full disk, not JSON, or not the fields and types the runtime writes."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(
            f"container state {path} is unreadable: {problem}",
            hint="`delete --force` ends the container and removes it",
        )
        self.path = path
        self.problem = problem


class FirmwareRefusedError(RuntimeCallError):
    """A firmware container cannot be created as asked (wrong firmware, no core, busy core)."""


def as_call_error(error: BaseException) -> RuntimeCallError:
    """An unexpected OSError or SmarterError as a RuntimeCallError, so the shim shows the user
    one line in runc's log instead of a traceback."""
    if isinstance(error, RuntimeCallError):
        return error
    if isinstance(error, OSError):
        what = error.strerror or str(error)
        where = f" {error.filename}" if error.filename else ""
        return RuntimeCallError(f"cannot access{where}: {what}")
    return RuntimeCallError(str(error))


def log_line(message: str, *, level: str = "error", log_format: str = "text") -> str:
    """One entry of runc's log in `log_format` (`json` or logrus `text`), newline included."""
    from smarter_common.logs import runc_entry

    return runc_entry(message, level=level, log_format=log_format)


def append_log(path: str | None, message: str, *, level: str, log_format: str) -> None:
    """Append one entry to the runtime log at `path` (stderr when None), as runc does."""
    line = log_line(message, level=level, log_format=log_format)
    if path is None:
        sys.stderr.write(line)
        sys.stderr.flush()
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def report(error: BaseException, *, log: str | None, log_format: str) -> int:
    """Write `error` where runc would (log file, and stderr when logging to a file); exit code."""
    message = str(error)
    try:
        append_log(log, message, level="error", log_format=log_format)
    except OSError as log_error:
        sys.stderr.write(f"smarter-hybrid-runtime: cannot write log {log}: {log_error}\n")
    if log is not None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    return 1
