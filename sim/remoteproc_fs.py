"""`/sys/class/remoteproc` as a FUSE filesystem: the files of each core, with sysfs behaviour.

Every open is direct I/O (mount option), so each read renders the current value and each
write() reaches `SimCore` at once and fails with the errno the kernel would return.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Sequence

from sim.channels import RPMSG_ATTRIBUTES, RpmsgDevice
from sim.core import SimCore
from smarter_common.remoteproc import (
    ATTR_FIRMWARE,
    ATTR_NAME,
    ATTR_RECOVERY,
    ATTR_STATE,
    encode_devicetree_strings,
)

# sysfs reports a page as the size of every attribute file.
_ATTR_SIZE = 4096
_WRITABLE = frozenset({ATTR_FIRMWARE, ATTR_STATE, ATTR_RECOVERY})
_CORE_FILES = (ATTR_NAME, ATTR_FIRMWARE, ATTR_STATE, ATTR_RECOVERY)


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _writable(rest: tuple[str, ...]) -> bool:
    return len(rest) == 1 and rest[0] in _WRITABLE


def _rpmsg_device(core: SimCore, parts: tuple[str, ...]) -> RpmsgDevice | None:
    """The core's rpmsg device at `parts` (under `remoteprocN`) if it exists now."""
    for device in core.rpmsg_devices():
        if device.parts == parts:
            return device
    return None


class RemoteprocFs:
    """The operations mfusepy calls, on paths under the mount point (`/remoteproc0/state`)."""

    # mfusepy: report times as integer nanoseconds.
    use_ns = True

    def __init__(self, cores: Sequence[SimCore]) -> None:
        self._cores = {core.device_id: core for core in cores}
        self._mounted_at = time.time_ns()
        self.on_init: list[Callable[[], object]] = []
        self.on_destroy: list[Callable[[], object]] = []

    # -- lookups -------------------------------------------------------------------------------

    def _resolve(self, path: str) -> tuple[SimCore | None, tuple[str, ...]]:
        """The core a path is in (None for the root) and the rest of the path under the core."""
        parts = tuple(part for part in path.split("/") if part)
        if not parts:
            return None, ()
        core = self._cores.get(parts[0])
        if core is None:
            raise _error(errno.ENOENT)
        return core, parts[1:]

    def _content(self, core: SimCore, rest: tuple[str, ...]) -> bytes:
        if len(rest) == 4:
            device = _rpmsg_device(core, rest[:3])
            text = device.attribute(rest[3]) if device is not None else None
            if text is not None:
                return text
        if rest == (ATTR_NAME,):
            return f"{core.core_type.cpu}\n".encode()
        if rest == (ATTR_FIRMWARE,):
            return f"{core.firmware}\n".encode()
        if rest == (ATTR_STATE,):
            return f"{core.state}\n".encode()
        if rest == (ATTR_RECOVERY,):
            return f"{core.recovery}\n".encode()
        if rest == ("device", "of_node", "compatible"):
            return encode_devicetree_strings((core.core_type.compatible,))
        if rest == ("device", "of_node", "name"):
            return b"m" + core.core_type.cpu.removeprefix("cortex-").encode() + b"\0"
        raise _error(errno.ENOENT)

    def _children(self, core: SimCore | None, rest: tuple[str, ...]) -> list[str] | None:
        """The entries of a directory, or None when the path is a file."""
        if core is None:
            return sorted(self._cores, key=lambda name: int(name.removeprefix("remoteproc")))
        # The rpmsg devices under the core's virtio device, as a board's kernel places them.
        devices = core.rpmsg_devices()
        vdev, virtio = devices[0].parts[:2]
        if rest == ():
            return [*_CORE_FILES, "device", vdev]
        if rest == ("device",):
            return ["of_node"]
        if rest == (vdev,):
            return [virtio]
        if rest == (vdev, virtio):
            return [device.name for device in devices]
        if len(rest) == 3 and _rpmsg_device(core, rest) is not None:
            return list(RPMSG_ATTRIBUTES)
        if rest == ("device", "of_node"):
            return ["compatible", "name"]
        return None

    # -- FUSE operations -----------------------------------------------------------------------

    def init(self, path: str) -> None:
        for callback in self.on_init:
            callback()

    def destroy(self, path: str) -> None:
        """Called once the loop has ended, just before libfuse frees its state."""
        for callback in self.on_destroy:
            callback()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        core, rest = self._resolve(path)
        times = {"st_atime": self._mounted_at, "st_mtime": self._mounted_at}
        times["st_ctime"] = self._mounted_at
        if self._children(core, rest) is not None:
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, **times}
        assert core is not None
        if rest in (("device", "of_node", "compatible"), ("device", "of_node", "name")):
            size = len(self._content(core, rest))
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": size, **times}
        self._content(core, rest)
        mode = 0o644 if rest[0] in _WRITABLE else 0o444
        return {"st_mode": stat.S_IFREG | mode, "st_nlink": 1, "st_size": _ATTR_SIZE, **times}

    def readdir(self, path: str, fh: int) -> list[str]:
        core, rest = self._resolve(path)
        children = self._children(core, rest)
        if children is None:
            raise _error(errno.ENOTDIR)
        return [".", "..", *children]

    def open(self, path: str, flags: int) -> int:
        core, rest = self._resolve(path)
        if core is None or self._children(core, rest) is not None:
            raise _error(errno.EISDIR)
        self._content(core, rest)
        # kernfs refuses to open a file for writing when the attribute has no store method.
        if flags & os.O_ACCMODE != os.O_RDONLY and not _writable(rest):
            raise _error(errno.EACCES)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        core, rest = self._resolve(path)
        if core is None:
            raise _error(errno.EISDIR)
        return self._content(core, rest)[offset : offset + size]

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        core, rest = self._resolve(path)
        if core is None:
            raise _error(errno.EISDIR)
        text = data.decode(errors="replace")
        if rest == (ATTR_STATE,):
            core.write_state(text)
        elif rest == (ATTR_FIRMWARE,):
            core.set_firmware(text)
        elif rest == (ATTR_RECOVERY,):
            core.write_recovery(text)
        else:
            raise _error(errno.EACCES)
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        # `echo start > state` truncates before writing; sysfs ignores that, and so do we.
        core, rest = self._resolve(path)
        if core is None or not _writable(rest):
            raise _error(errno.EACCES)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        return 0
