"""Inter-process locks on files (flock): released by the kernel when the holder dies."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from smarter_common.deadline import Deadline
from smarter_common.errors import LockBusyError

_POLL_SECONDS = 0.005


class FileLock:
    """An exclusive lock on `path`, created if missing.

    The lock belongs to the open file, so a child that inherits the descriptor keeps holding it
    after the parent exits; that is how a supervisor process can carry a reservation on.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def fileno(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"lock {self.path} is not held")
        return self._fd

    def acquire(self, *, timeout: float | None = None) -> None:
        """Take the lock; wait at most `timeout` seconds (None: forever, 0: do not wait)."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                self._acquire_within(fd, timeout)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def _acquire_within(self, fd: int, timeout: float) -> None:
        deadline = Deadline(timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if deadline.expired():
                    raise LockBusyError(
                        f"lock {self.path} is held by another process",
                        hint=f"gave up after {timeout:g}s",
                    ) from None
                deadline.sleep(_POLL_SECONDS)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_current(path: Path, *, timeout: float | None = None) -> FileLock:
    """The lock on the file now at `path`; LockBusyError if not had within `timeout`.

    For lock files that their last user removes: locking an open file that was unlinked
    meanwhile locks nothing anyone else can see, so the path must still name the file locked
    once the lock is had, else the lock is taken again on whatever is there now.
    """
    while True:
        lock = FileLock(path)
        lock.acquire(timeout=timeout)
        try:
            here = os.stat(path)
        except FileNotFoundError:
            lock.release()
            continue
        held = os.fstat(lock.fileno)
        if (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino):
            return lock
        lock.release()


def is_locked(path: Path) -> bool:
    """Whether some process holds the lock on `path` right now."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
