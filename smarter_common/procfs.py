"""Processes as /proc shows them: whether one still runs, when it started, its command line, and
which processes run a given program with a given argument.

The one reader of /proc/<pid>/stat and /proc/<pid>/cmdline for the simulator, the test bed and
the tests. Standard library only, so that an exec'd path may use it.
"""

from __future__ import annotations

import os

_PROC = "/proc"
# A zombie has exited and only waits to be reaped; X is a task being torn down.
_ENDED_STATES = ("Z", "X")


def stat_fields(stat: str) -> list[str]:
    """The fields of a /proc/<pid>/stat line after the command name, which may itself hold
    spaces and parentheses: fields[0] is the state (field 3 of proc(5))."""
    return stat.rpartition(")")[2].split()


def _stat(pid: int) -> list[str]:
    try:
        with open(f"{_PROC}/{pid}/stat") as stream:
            return stat_fields(stream.read())
    except OSError:
        return []


def process_alive(pid: int) -> bool:
    """Whether `pid` exists and has not exited (a zombie has)."""
    fields = _stat(pid)
    return bool(fields) and fields[0] not in _ENDED_STATES


def process_start_time(pid: int) -> str:
    """The kernel's start time of `pid` (field 22 of proc(5)), which tells a process from a later
    one given the same PID; '' if it is gone or has exited."""
    fields = _stat(pid)
    if len(fields) < 20 or fields[0] in _ENDED_STATES:
        return ""
    return fields[19]


def command_line(pid: int) -> list[bytes] | None:
    """The arguments `pid` was started with; None if it is gone (or a kernel thread's, empty)."""
    try:
        with open(f"{_PROC}/{pid}/cmdline", "rb") as stream:
            raw = stream.read()
    except OSError:
        return None
    return raw.removesuffix(b"\0").split(b"\0") if raw else []


def pids_with(program: bytes, argument: bytes = b"") -> list[int]:
    """PIDs whose argv[0] contains `program` and whose NUL-separated command line contains
    `argument` (which may itself span arguments, NULs included)."""
    pids = []
    for name in os.listdir(_PROC):
        if not name.isdigit():
            continue
        try:
            with open(f"{_PROC}/{name}/cmdline", "rb") as stream:
                raw = stream.read()
        except OSError:
            continue
        if raw and program in raw.split(b"\0", 1)[0] and argument in raw:
            pids.append(int(name))
    return sorted(pids)
