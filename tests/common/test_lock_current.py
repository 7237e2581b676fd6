"""lock_current: the lock on the file a path names now, for lock files their last user removes."""

import os
import threading
import time
from pathlib import Path

import pytest

from smarter_common.errors import LockBusyError
from smarter_common.locks import FileLock, lock_current


def test_a_waiter_ends_up_holding_the_file_now_at_the_path_not_the_one_removed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "attachment"
    first = FileLock(path)
    first.acquire()
    got: list[FileLock] = []
    waiter = threading.Thread(target=lambda: got.append(lock_current(path)))
    waiter.start()
    time.sleep(0.1)  # the waiter is blocked on the file about to be removed
    path.unlink()
    path.write_text("")  # a newcomer's file, at the same path
    first.release()
    waiter.join(timeout=10)
    assert got, "the waiter never got the lock"
    held = os.fstat(got[0].fileno)
    here = os.stat(path)
    assert (held.st_dev, held.st_ino) == (here.st_dev, here.st_ino)
    got[0].release()


def test_a_held_lock_is_busy_at_once_with_timeout_zero(tmp_path: Path) -> None:
    path = tmp_path / "attachment"
    with FileLock(path), pytest.raises(LockBusyError, match="held by another process"):
        lock_current(path, timeout=0)
