"""The typed edge of mfusepy (which ships no type information)."""

from __future__ import annotations

from pathlib import Path

from sim.remoteproc_fs import RemoteprocFs


def serve(fs: RemoteprocFs, mount_point: Path) -> None:
    """Mount `fs` at `mount_point` and serve requests until it is unmounted."""
    import mfusepy

    mfusepy.FUSE(
        fs,
        str(mount_point),
        foreground=True,
        allow_other=True,
        # The kernel enforces the modes, as sysfs does: only root writes `state` and `firmware`.
        default_permissions=True,
        fsname="smarter-sim",
        subtype="smarter-sim",
        direct_io=True,
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
    )
