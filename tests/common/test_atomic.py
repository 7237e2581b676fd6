import os
from pathlib import Path

import pytest

from smarter_common.atomic import remove_durably, write_atomic


def test_write_atomic_creates_file_with_content_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "record"
    write_atomic(target, "10.0.0.2 pod\n", mode=0o600)
    assert target.read_text() == "10.0.0.2 pod\n"
    assert target.stat().st_mode & 0o777 == 0o600


def test_write_atomic_replaces_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "record"
    target.write_text("old content that is longer than the new one\n")
    inode_before = target.stat().st_ino
    write_atomic(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert target.stat().st_ino != inode_before, "a rename, not an in-place rewrite"
    assert os.listdir(tmp_path) == ["record"]


def test_write_atomic_failure_keeps_old_content_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "record"
    target.write_text("old\n")
    with pytest.raises(TypeError):
        write_atomic(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["record"]


@pytest.mark.parametrize(("durable", "fsyncs"), [(True, 2), (False, 0)])
def test_write_atomic_fsyncs_file_and_directory_only_when_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, fsyncs: int
) -> None:
    target = tmp_path / "record"
    target.write_text("old\n")
    inode_before = target.stat().st_ino
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_atomic(target, "new\n", durable=durable)
    assert len(synced) == fsyncs
    # Atomic either way: a rename of a whole new file, nothing left behind.
    assert target.read_text() == "new\n"
    assert target.stat().st_ino != inode_before
    assert os.listdir(tmp_path) == ["record"]


def test_remove_durably_reports_whether_it_removed(tmp_path: Path) -> None:
    target = tmp_path / "record"
    target.write_text("x")
    assert remove_durably(target) is True
    assert remove_durably(target) is False


def test_write_atomic_and_remove_durably_take_str_paths(tmp_path: Path) -> None:
    # The firmware kill path (issue 16) names files by str, without pathlib.
    target = os.path.join(tmp_path, "record")
    write_atomic(target, "new\n", mode=0o600)
    assert Path(target).read_text() == "new\n"
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["record"]
    assert remove_durably(target) is True
    assert remove_durably(target) is False


def test_write_atomic_of_a_bare_name_writes_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_atomic("record", b"new\n")
    assert (tmp_path / "record").read_bytes() == b"new\n"
    assert os.listdir(tmp_path) == ["record"]
    assert remove_durably("record") is True
    assert os.listdir(tmp_path) == []


def test_write_atomic_failure_with_a_str_path_leaves_no_temporary(tmp_path: Path) -> None:
    target = os.path.join(tmp_path, "record")
    with pytest.raises(TypeError):
        write_atomic(target, 42)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []
