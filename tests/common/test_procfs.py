"""Processes as /proc shows them: alive, exited but unreaped, their command lines."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from smarter_common.procfs import (
    command_line,
    pids_with,
    process_alive,
    process_start_time,
    stat_fields,
)


def test_a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() -> None:
    line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0\n"

    fields = stat_fields(line)

    assert fields[0] == "S"
    assert fields[19] == "777"


def test_a_running_process_is_alive_and_has_a_start_time() -> None:
    assert process_alive(os.getpid())
    assert process_start_time(os.getpid()) != ""


def test_an_exited_unreaped_child_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while process_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not process_alive(child.pid)
        assert process_start_time(child.pid) == ""
    finally:
        child.wait()


def test_a_process_that_is_gone_has_no_command_line() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()

    assert command_line(child.pid) is None
    assert not process_alive(child.pid)


def test_pids_with_matches_the_program_and_an_argument_spanning_a_nul() -> None:
    marker = f"smarter-procfs-{os.getpid()}"
    script = "print('up', flush=True); import sys; sys.stdin.read()"
    child = subprocess.Popen(
        [sys.executable, "-c", script, marker], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"up\n"
        assert command_line(child.pid) == [
            os.fsencode(sys.executable),
            b"-c",
            script.encode(),
            marker.encode(),
        ]
        spanning = f"sys.stdin.read()\0{marker}".encode()
        assert pids_with(b"python", spanning) == [child.pid]
        assert pids_with(b"no-such-program", spanning) == []
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
