"""Reading and unmounting mount points, as the simulator, the test bed and the tests do."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.mounts import Mount, detach_all, mount_points, mounts_under, parse_mountinfo, unmount

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "55 27 0:49 / /tmp/gw\\040one/sys/class/remoteproc rw,nosuid,nodev,relatime - "
    "fuse.smarter-sim smarter-sim rw,user_id=0,group_id=0,allow_other\n"
)


def test_mount_points_decode_octal_escapes(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)

    assert mount_points(info) == [Path("/"), Path("/tmp/gw one/sys/class/remoteproc")]


def test_escaped_whitespace_backslash_and_utf8_names_round_trip() -> None:
    line = "60 22 0:50 / /srv/a\\011b\\012c\\134d\\040caf\u00e9 rw - tmpfs tmpfs rw\n"

    assert parse_mountinfo(line.encode()) == [Mount(Path("/srv/a\tb\nc\\d caf\u00e9"), "tmpfs")]


def test_the_filesystem_type_follows_the_optional_fields() -> None:
    line = b"61 22 0:51 / /mnt rw shared:7 master:2 - fuse.smarter-sim smarter-sim rw\n"

    assert parse_mountinfo(line) == [Mount(Path("/mnt"), "fuse.smarter-sim")]


@pytest.fixture
def tmpfs_named_with_a_space_and_an_accent(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "gw caf\u00e9" / "inner"
    point.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "smarter-test", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.mark.root
def test_a_real_mount_with_a_non_ascii_name_is_found_and_unmounted(
    tmpfs_named_with_a_space_and_an_accent: Path, tmp_path: Path
) -> None:
    point = tmpfs_named_with_a_space_and_an_accent

    assert mounts_under(tmp_path) == [point]
    unmount(point)
    assert mounts_under(tmp_path) == []


@pytest.mark.root
def test_detach_all_takes_nested_mounts_deepest_first_even_while_busy(
    tmpfs_named_with_a_space_and_an_accent: Path, tmp_path: Path
) -> None:
    outer = tmpfs_named_with_a_space_and_an_accent
    inner = outer / "d\u00e9j\u00e0 vu"
    inner.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "smarter-test", str(inner)], check=True)
    with (inner / "open").open("w"):
        assert detach_all(tmp_path) == [inner, outer]
    assert mounts_under(tmp_path) == []
