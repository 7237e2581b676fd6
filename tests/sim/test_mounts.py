"""Reading mount points from mountinfo, as the simulator and its tests do."""

from __future__ import annotations

from pathlib import Path

from sim.mounts import mount_points

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "55 27 0:49 / /tmp/gw\\040one/sys/class/remoteproc rw,nosuid,nodev,relatime - "
    "fuse.smarter-sim smarter-sim rw,user_id=0,group_id=0,allow_other\n"
)


def test_mount_points_decode_octal_escapes(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)

    assert mount_points(info) == [Path("/"), Path("/tmp/gw one/sys/class/remoteproc")]
