"""The plain files of the simulated host root: what `up` creates and `down` removes again.

Only what the simulator made is removed (a directory it made goes with everything in it, such
as firmware copied into `lib/firmware`); the root itself and anything that was there stays.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from sim.mounts import mounts_under
from smarter_common.logs import get_logger

# Character devices a gateway typically has, with their usual numbers
# (Documentation/admin-guide/devices.txt; gpiochip's major is dynamic, 254 is common).
DEVICE_NODES: tuple[tuple[str, int, int], ...] = (
    ("ttyUSB0", 188, 0),
    ("ttyACM0", 166, 0),
    ("i2c-1", 89, 1),
    ("gpiochip0", 254, 0),
    ("snd/controlC0", 116, 0),
    ("snd/pcmC0D0p", 116, 16),
    ("snd/timer", 116, 33),
)


class Layout:
    """Creates paths under `root`, remembering which ones it made."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: list[Path] = []
        self._log = get_logger("smarter-sim")

    def mkdir(self, path: Path) -> Path:
        missing = []
        current = path
        while not current.exists() and current != self.root:
            missing.append(current)
            current = current.parent
        for directory in reversed(missing):
            directory.mkdir()
            self._made.append(directory)
        return path

    def write(self, path: Path, data: bytes, *, owned: bool = False) -> None:
        """Write `path`; it is removed later if it is new, or `owned` (replaced wholesale)."""
        self.mkdir(path.parent)
        existed = path.exists()
        path.write_bytes(data)
        if owned or not existed:
            self._made.append(path)

    def mknod(self, path: Path, major: int, minor: int, mode: int = 0o660) -> None:
        self.mkdir(path.parent)
        if path.exists() or path.is_symlink():
            return
        os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
        self._made.append(path)

    def symlink(self, path: Path, target: str) -> None:
        """A link at `path` to `target`; one left by a killed simulator is replaced."""
        self.mkdir(path.parent)
        if path.is_symlink():
            path.unlink()
        path.symlink_to(target)
        self._made.append(path)

    def remove(self) -> None:
        """Remove what this layout made, newest first; never anything under a mount."""
        for path in reversed(self._made):
            if mounts_under(path):
                self._log.error("mounted_path_kept", path=str(path))
                continue
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError as error:
                self._log.error("removal_failed", path=str(path), error=str(error))
        self._made.clear()
