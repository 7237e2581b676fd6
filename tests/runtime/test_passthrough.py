"""Containers that are not firmware are run by the real runc, called through us unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from .conftest import RUNC, MakeBundle, log_messages, runtime


def _shim_globals(root: Path, bundle: Path) -> list[str]:
    return ["--root", str(root), "--log", str(bundle / "log.json"), "--log-format", "json"]


def test_busybox_container_runs_through_the_whole_cycle(
    make_bundle: MakeBundle, runc_root: Path
) -> None:
    bundle = make_bundle(["/bin/sh", "-c", "echo hello from busybox; exec sleep 60"], busybox=True)
    shim = _shim_globals(runc_root, bundle)
    read_end, write_end = os.pipe()
    # A file, not a pipe: the container keeps its stderr open after create returns.
    stderr = (bundle / "stderr").open("w+")
    try:
        created = runtime(
            *shim,
            "create",
            "--bundle",
            str(bundle),
            "--pid-file",
            str(bundle / "init.pid"),
            "bb1",
            stdout=write_end,
            capture_output=False,
            stderr=stderr,
        )
        os.close(write_end)
        write_end = -1
        stderr.seek(0)
        assert created.returncode == 0, stderr.read()
        pid = int((bundle / "init.pid").read_text())
        state = json.loads(runtime(*shim, "state", "bb1").stdout)
        assert state["status"] == "created"
        assert state["pid"] == pid
        assert runtime(*shim, "start", "bb1").returncode == 0
        with os.fdopen(read_end, "rb") as output:
            read_end = -1
            assert output.readline() == b"hello from busybox\n"
        assert json.loads(runtime(*shim, "state", "bb1").stdout)["status"] == "running"
        assert runtime(*shim, "kill", "bb1", "KILL").returncode == 0
        _wait_stopped(shim, "bb1")
        assert runtime(*shim, "delete", "bb1").returncode == 0
        assert not (runc_root / "bb1").exists()
        assert not (runc_root / "smarter-hybrid").exists()
    finally:
        stderr.close()
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)


def _wait_stopped(shim: list[str], container_id: str) -> None:
    deadline = time.monotonic() + 10
    while json.loads(runtime(*shim, "state", container_id).stdout)["status"] != "stopped":
        assert time.monotonic() < deadline, "container did not stop"
        time.sleep(0.05)


def test_unknown_container_gives_runc_error_in_the_log(tmp_path: Path, runc_root: Path) -> None:
    log = tmp_path / "log.json"
    result = runtime(
        "--root", str(runc_root), "--log", str(log), "--log-format", "json", "state", "nope"
    )
    assert result.returncode == 1
    assert log_messages(log) == ["container does not exist"]


def test_arguments_reach_runc_unchanged(tmp_path: Path) -> None:
    argv = ["--root", str(tmp_path), "--systemd-cgroup", "kill", "--all", "some-id", "9"]
    result = runtime(*argv, env={**os.environ, "SMARTER_RUNC": "/bin/echo"})
    assert result.stdout == " ".join(argv) + "\n"


def test_features_are_runcs(tmp_path: Path) -> None:
    ours = runtime("--root", str(tmp_path), "features")
    theirs = subprocess.run(
        [RUNC, "--root", str(tmp_path), "features"], capture_output=True, text=True, check=True
    )
    assert ours.returncode == 0
    assert json.loads(ours.stdout) == json.loads(theirs.stdout)


def test_unreadable_bundle_is_reported_by_runc(tmp_path: Path, runc_root: Path) -> None:
    log = tmp_path / "log.json"
    result = runtime(
        "--root",
        str(runc_root),
        "--log",
        str(log),
        "--log-format",
        "json",
        "create",
        "--bundle",
        str(tmp_path / "absent"),
        "x1",
    )
    assert result.returncode == 1
    assert log_messages(log) == [
        f"runc create failed: chdir {tmp_path}/absent: no such file or directory"
    ]
    assert not (runc_root / "smarter-hybrid").exists()


def test_list_does_not_take_our_state_directory_for_a_broken_runc_container(
    runc_root: Path,
) -> None:
    (runc_root / "smarter-hybrid" / "fw1").mkdir(parents=True)
    for args in ([], ["-q"], ["--format", "json"]):
        ours = runtime("--root", str(runc_root), "list", *args)
        runcs = subprocess.run(
            [RUNC, "--root", str(runc_root), "list", *args], capture_output=True, text=True
        )
        assert "load container smarter-hybrid" in runcs.stderr
        assert (ours.returncode, ours.stdout, ours.stderr) == (0, runcs.stdout, ""), args
