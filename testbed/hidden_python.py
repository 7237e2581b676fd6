"""A node with no python3: a command in a mount namespace where every python3 is hidden.

Many gateways have no python3 at all, so what containerd executes there must run on the bundle
(scripts/build_bundle.py) alone. Here a command gets a mount namespace of its own in which an
empty file lies over each interpreter of this machine, an empty read-only tmpfs over each
installation and venv, and the bundle (read-only) at PREFIX, the path a node has: whatever
still starts there runs on the bundle, or fails.

containerd is run this way on the simulated gateway; what it makes under a shared mount (the
gateway's work directory: pods' network namespaces, root filesystems) is still seen by the
other programs of the node (the CNI agent, the test bed), as on a node; the mounts that hide
python3 are made on mounts first turned slave, so they never reach the machine.
"""

from __future__ import annotations

import glob
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from sim.mounts import mount_points

PREFIX = PurePosixPath("/opt/smarter-edge")
REPO = Path(__file__).resolve().parents[1]
_INTERPRETERS = ("/usr/bin/python3*", "/usr/local/bin/python3*", "/bin/python3*")


def pythons() -> tuple[list[str], list[str]]:
    """(interpreter files, installation directories) of every python3 on this machine."""
    files = sorted(
        {
            path
            for pattern in _INTERPRETERS
            for path in glob.glob(pattern)
            if os.path.isfile(path) and not os.path.islink(path)
        }
    )
    directories = [
        *glob.glob("/usr/lib/python3*"),
        *glob.glob("/usr/local/lib/python3*"),
        sys.base_prefix,
        sys.prefix,
        str(REPO / ".venv"),
        os.path.expanduser("~/.pyenv"),
    ]
    found = sorted({os.path.realpath(d) for d in directories if os.path.isdir(d)} - {"/usr"})
    # An empty tmpfs over a directory hides what is inside it too.
    outermost = [d for d in found if not any(Path(d).is_relative_to(o) for o in found if o != d)]
    return files, outermost


def without_python(bundle: Path, *command: str) -> list[str]:
    """`command` in a private mount namespace: no python3 anywhere, `bundle` at PREFIX."""
    return ["unshare", "--mount", "--propagation", "private", *_shell(_hiding(bundle), command)]


def without_python_sharing(bundle: Path, *command: str) -> list[str]:
    """`command` with no python3 and `bundle` at PREFIX, its mounts under a shared mount (see
    `share`) seen outside; the hiding mounts are made on mounts turned slave, never seen."""
    files, directories = pythons()
    containing = sorted({_mount_of(Path(path)) for path in ["/opt", *files, *directories]})
    steps = [f"mount --make-slave {shlex.quote(str(point))}" for point in containing]
    unchanged = ["unshare", "--mount", "--propagation", "unchanged"]
    return [*unchanged, *_shell([*steps, *_hiding(bundle)], command)]


def share(directory: Path) -> None:
    """Make `directory` a shared mount of its own (a bind onto itself), so that what a command
    of `without_python_sharing` mounts under it is mounted here too. Undone by unmounting it
    (sim.mounts.detach_all of a directory above or at it)."""
    for step in (["--bind", directory, directory], ["--make-shared", directory]):
        subprocess.run(["mount", *map(str, step)], check=True, capture_output=True)


def _hiding(bundle: Path) -> list[str]:
    files, directories = pythons()
    steps = ["mount -t tmpfs -o mode=0755 none /opt", f"mkdir {PREFIX}"]
    steps.append(f"mount --bind -o ro {shlex.quote(str(bundle))} {PREFIX}")
    steps += [f"mount --bind /dev/null {shlex.quote(f)}" for f in files]
    steps += [f"mount -t tmpfs -o ro none {shlex.quote(d)}" for d in directories]
    return steps


def _shell(steps: Sequence[str], command: Sequence[str]) -> list[str]:
    return ["sh", "-ec", " && ".join([*steps, 'exec "$@"']), "sh", *command]


def _mount_of(path: Path) -> Path:
    """The mount `path` is on (or the mount at `path`): the one a mount over it goes under."""
    real = Path(os.path.realpath(path))
    return max(
        (point for point in mount_points() if real.is_relative_to(point)),
        key=lambda point: len(point.parts),
    )
