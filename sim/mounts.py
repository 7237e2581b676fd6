"""Mount points as the kernel lists them, and unmounting them: the simulator's FUSE filesystem
and whatever a test bed's containerd or container tools left below a directory.

This is the one reader of mountinfo and the one unmounter; the simulator, the test bed and the
tests all use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

_MNT_DETACH = 2
_MOUNTINFO = Path("/proc/self/mountinfo")
# The kernel escapes only space, tab, newline and backslash in a mount point, as three octal
# digits; every other byte (UTF-8 names included) is written as it is.
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo: where it is mounted and the filesystem type."""

    point: Path
    fstype: str


def decode_mount_field(field: bytes) -> Path:
    """A mountinfo path field as a path: octal escapes become their bytes, then the bytes are
    decoded as the file system's names are (so a UTF-8 name round-trips)."""
    raw = _OCTAL_ESCAPE.sub(lambda match: bytes([int(match.group(1), 8)]), field)
    return Path(os.fsdecode(raw))


def parse_mountinfo(text: bytes) -> list[Mount]:
    """Every mount in mountinfo's `text`, in the kernel's order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(b" ")
        if len(fields) <= 4:
            continue
        # Optional fields end at a lone "-"; the filesystem type follows it.
        after = fields.index(b"-") + 1 if b"-" in fields[5:] else len(fields)
        fstype = fields[after].decode(errors="replace") if after < len(fields) else ""
        mounts.append(Mount(decode_mount_field(fields[4]), fstype))
    return mounts


def mounts(mountinfo: Path = _MOUNTINFO) -> list[Mount]:
    """Every mount this process sees."""
    return parse_mountinfo(mountinfo.read_bytes())


def mount_points(mountinfo: Path = _MOUNTINFO) -> list[Path]:
    """Every mount point in `mountinfo` (octal escapes such as `\\040` decoded)."""
    return [mount.point for mount in mounts(mountinfo)]


def _under(base: Path, point: Path) -> bool:
    return point == base or base in point.parents


def mounts_under(path: Path) -> list[Path]:
    """The mount points at or below `path`, deepest first (the order to unmount them)."""
    base = Path(os.path.realpath(path))
    points = [point for point in mount_points() if _under(base, point)]
    return sorted(points, key=lambda point: len(point.parts), reverse=True)


def _umount2(path: Path, flags: int) -> int:
    """umount2(2): 0, or the errno it failed with."""
    libc = ctypes.CDLL(None, use_errno=True)
    return 0 if libc.umount2(os.fsencode(path), flags) == 0 else ctypes.get_errno()


def _is_fuse(path: Path) -> bool:
    found = [mount for mount in mounts() if mount.point == path]
    return bool(found) and found[-1].fstype.split(".", 1)[0] == "fuse"


def unmount(path: Path) -> None:
    """Unmount `path`; if files on it are still open, detach it and abort its FUSE connection.

    A plain unmount fails with EBUSY while a reader holds a file open; a lazy one succeeds but
    the FUSE connection (and the simulator's request loop) lives on until that file is closed,
    so the connection is aborted through fusectl when it is mounted.
    """
    code = _umount2(path, 0)
    if code == 0:
        return
    if code != errno.EBUSY:
        raise OSError(code, f"cannot unmount {path}: {os.strerror(code)}")
    fuse = _is_fuse(Path(os.path.realpath(path)))
    connection = os.minor(os.stat(path).st_dev)
    code = _umount2(path, _MNT_DETACH)
    if code != 0:
        raise OSError(code, f"cannot detach {path}: {os.strerror(code)}")
    if fuse:
        abort = Path("/sys/fs/fuse/connections") / str(connection) / "abort"
        with contextlib.suppress(OSError):
            abort.write_text("1")


def detach_all(directory: Path) -> list[Path]:
    """Lazily unmount (detach) every mount at or below `directory`, deepest first; the mount
    points that were there. Teardown's last resort: a busy mount goes out of sight at once and
    is freed when its last user ends; one already gone with its parent is not an error."""
    points = mounts_under(directory)
    for point in points:
        code = _umount2(point, _MNT_DETACH)
        if code not in (0, errno.EINVAL, errno.ENOENT):
            raise OSError(code, f"cannot detach {point}: {os.strerror(code)}")
    return points
