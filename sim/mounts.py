"""Mount points as the kernel lists them, and unmounting the simulator's FUSE filesystem."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
from pathlib import Path

_MNT_DETACH = 2
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def mount_points(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Path]:
    """Every mount point in `mountinfo` (octal escapes such as `\\040` decoded)."""
    points = []
    for line in mountinfo.read_text().splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.append(Path(_OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])))
    return points


def mounts_under(path: Path) -> list[Path]:
    """The mount points at or below `path`."""
    base = Path(os.path.realpath(path))
    return [point for point in mount_points() if point == base or base in point.parents]


def unmount(path: Path) -> None:
    """Unmount `path`; if files on it are still open, detach it and abort its FUSE connection.

    A plain unmount fails with EBUSY while a reader holds a file open; a lazy one succeeds but
    the FUSE connection (and the simulator's request loop) lives on until that file is closed,
    so the connection is aborted through fusectl when it is mounted.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(path), 0) == 0:
        return
    code = ctypes.get_errno()
    if code != errno.EBUSY:
        raise OSError(code, f"cannot unmount {path}: {os.strerror(code)}")
    connection = os.minor(os.stat(path).st_dev)
    if libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot detach {path}: {os.strerror(code)}")
    abort = Path("/sys/fs/fuse/connections") / str(connection) / "abort"
    with contextlib.suppress(OSError):
        abort.write_text("1")
