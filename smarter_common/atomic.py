"""Files replaced whole: a reader sees the old content or the new, never a part."""

from __future__ import annotations

import os
import time

# No `pathlib` at run time: a firmware container's `kill` imports this module (through
# runtime_handler.state) and kill -> stopped pays for every import (issue 16).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeAlias

    PathLike: TypeAlias = "str | os.PathLike[str]"


def write_atomic(
    path: PathLike, data: bytes | str, *, mode: int = 0o644, durable: bool = True
) -> None:
    """Write `data` to `path` via a temporary file in the same directory, fsync, then rename.

    `durable=False` skips both fsyncs for a file nobody needs after a power loss: readers still
    see the old content or the new, but a crash may leave it empty (an fsync on an SD card can
    take tens of milliseconds).
    """
    payload = data.encode() if isinstance(data, str) else data
    directory, name = os.path.split(os.fspath(path))
    # A dot-name keeps watchers such as dnsmasq's --hostsdir from reading the half-written file.
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        _unlink(temporary)
        raise
    if durable:
        _fsync_directory(directory)


def remove_durably(path: PathLike) -> bool:
    """Remove `path` if it exists; True when something was removed."""
    if not _unlink(path):
        return False
    _fsync_directory(os.path.dirname(os.fspath(path)))
    return True


def _unlink(path: PathLike) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _fsync_directory(directory: str) -> None:
    # '' is the current directory: os.path.split of a bare file name.
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
