"""Files replaced whole: a reader sees the old content or the new, never a part."""

from __future__ import annotations

import os
import time
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write `data` to `path` via a temporary file in the same directory, fsync, then rename.

    `durable=False` skips both fsyncs for a file nobody needs after a power loss: readers still
    see the old content or the new, but a crash may leave it empty (an fsync on an SD card can
    take tens of milliseconds).
    """
    payload = data.encode() if isinstance(data, str) else data
    directory = path.parent
    # A dot-name keeps watchers such as dnsmasq's --hostsdir from reading the half-written file.
    temporary = directory / f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
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
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_directory(directory)


def remove_durably(path: Path) -> bool:
    """Remove `path` if it exists; True when something was removed."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    _fsync_directory(path.parent)
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
