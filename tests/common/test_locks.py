import subprocess
import sys
from pathlib import Path

import pytest

from smarter_common.errors import LockBusyError
from smarter_common.locks import FileLock, is_locked

_HOLD_LOCK = """
import sys, time
from pathlib import Path
from smarter_common.locks import FileLock
lock = FileLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
"""


def _holder(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_held_by_another_process_is_busy(tmp_path: Path) -> None:
    path = tmp_path / "core.lock"
    holder = _holder(path)
    try:
        assert is_locked(path)
        with pytest.raises(LockBusyError, match=r"core\.lock is held by another process"):
            FileLock(path).acquire(timeout=0.05)
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_released_when_the_holder_dies(tmp_path: Path) -> None:
    path = tmp_path / "core.lock"
    holder = _holder(path)
    holder.kill()
    holder.wait()
    assert not is_locked(path)
    lock = FileLock(path)
    lock.acquire(timeout=0)
    assert lock.held
    lock.release()
    assert not lock.held


def test_context_manager_takes_and_releases(tmp_path: Path) -> None:
    path = tmp_path / "ipam.lock"
    with FileLock(path):
        assert is_locked(path)
    assert not is_locked(path)


def test_is_locked_on_missing_file_is_false(tmp_path: Path) -> None:
    assert not is_locked(tmp_path / "absent.lock")
