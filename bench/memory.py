"""A process's memory (RSS and PSS, from /proc) and its import floor: a process that imports
exactly the modules a daemon imported and then does nothing, for the daemon's figures to be
read against."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

IMPORT_TIME = "import time:"
# Imports the module names on stdin (one a line, in the order the daemon finished them; a name
# that does not import alone, such as a private module of a package, is skipped), then waits.
_FLOOR_PROGRAM = """\
import importlib, sys
for name in sys.stdin.read().split():
    try:
        importlib.import_module(name)
    except Exception:
        pass
print("imported", flush=True)
sys.stdin.close()
import signal
signal.pause()
"""


@dataclass(frozen=True)
class Memory:
    """Resident (RSS) and proportional (PSS: shared pages divided among their users) size, and
    PSS's anonymous part: the process's own heap and stacks, which, unlike the libraries' file
    pages, no other process starting or stopping moves (the figure to read for growth)."""

    rss_mb: float
    pss_mb: float
    pss_anon_mb: float

    def __add__(self, other: Memory) -> Memory:
        return Memory(
            self.rss_mb + other.rss_mb,
            self.pss_mb + other.pss_mb,
            self.pss_anon_mb + other.pss_anon_mb,
        )


def memory_of(pid: int) -> Memory:
    """`pid`'s RSS, PSS and anonymous PSS now, from /proc/<pid>/smaps_rollup (kB)."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        words = rest.split()
        if len(words) == 2 and words[1] == "kB":
            fields[name] = int(words[0])
    return Memory(fields["Rss"] / 1024, fields["Pss"] / 1024, fields["Pss_Anon"] / 1024)


def imported_modules(importtime_stderr: str) -> list[str]:
    """The modules a `-X importtime` run imported, in the order their imports finished."""
    names = []
    for line in importtime_stderr.splitlines():
        if line.startswith(IMPORT_TIME) and not line.rstrip().endswith("imported package"):
            names.append(line.rsplit("|", 1)[-1].strip())
    return names


def import_floor(modules: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> Memory:
    """The memory of this interpreter after importing `modules` and nothing else."""
    process = subprocess.Popen(
        [sys.executable, "-c", _FLOOR_PROGRAM],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("\n".join(modules).encode())
        process.stdin.close()
        if process.stdout.readline() != b"imported\n":
            raise RuntimeError("the import floor process did not finish importing")
        time.sleep(0.5)
        return memory_of(process.pid)
    finally:
        process.kill()
        process.wait()
