"""Putting the host-side bundle on a node: file by file, each replaced by rename.

The bundle (scripts/build_bundle.py) is what smarter-cni and smarter-hybrid-runtime run on at
the host: their zipapps, whose `#!` line names the bundle's interpreter by absolute path, and the
interpreter with its standard library subset, libraries and loader. It runs only at the prefix
it was built for, so that prefix is read from the programs' `#!` lines, never given.

Both installers put it there (`smarter-cni install --bundle`, `smarter-hybrid-runtime
install-containerd-config --bundle`), whichever DaemonSet comes first: each file is written
under a temporary name in its own directory and renamed over the old one, so a program running
from the bundle keeps the files it has open, one starting meanwhile gets a whole file, old or
new, and two installers at once never write into each other's files. Identical files are left
alone (a second install writes nothing). The libraries and standard library go before
bin/python3, so an interpreter is never there before what it loads. Files an older bundle had
and this one has not are left: a program still running may load them.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from smarter_common.errors import ConfigError
from smarter_common.hostroot import HostRoot

PROGRAMS = ("smarter-cni", "smarter-hybrid-runtime")
INTERPRETER = PurePosixPath("bin/python3")
# What a program's first line starts with: `#!<prefix>/bin/python3 -IS ...`.
_SHEBANG = b"#!"


class BundleError(ConfigError):
    """What was given as the bundle is not one, or cannot be installed."""


@dataclass(frozen=True)
class BundleInstalled:
    """Where the bundle went (a host path) and how many of its files had to be written."""

    prefix: PurePosixPath
    written: int
    unchanged: int


def prefix_of(program: Path) -> PurePosixPath:
    """The prefix a built program runs from: its `#!` names `<prefix>/bin/python3`."""
    try:
        with program.open("rb") as stream:
            first = stream.readline(256)
    except OSError as error:
        raise BundleError(f"cannot read {program}: {error.strerror}") from error
    words = first.removeprefix(_SHEBANG).split()
    interpreter = (
        PurePosixPath(os.fsdecode(words[0])) if first.startswith(_SHEBANG) and words else None
    )
    if interpreter is None or not interpreter.is_absolute() or not _names_interpreter(interpreter):
        raise BundleError(
            f"{program} does not start its bundle's interpreter (its first line is"
            f" {first[:100]!r}, not #!<prefix>/{INTERPRETER})",
            hint="give the directory scripts/build_bundle.py wrote (the image's"
            " /opt/smarter-edge/bundle)",
        )
    return PurePosixPath(*interpreter.parts[: -len(INTERPRETER.parts)])


def _names_interpreter(path: PurePosixPath) -> bool:
    return len(path.parts) > len(INTERPRETER.parts) and path.parts[-2:] == INTERPRETER.parts


def bundle_prefix(bundle: Path) -> PurePosixPath:
    """The prefix `bundle` was built for; BundleError when `bundle` is not a whole bundle."""
    if not bundle.is_dir():
        raise BundleError(
            f"{bundle} is not a directory",
            hint="give the directory scripts/build_bundle.py wrote (the image's"
            " /opt/smarter-edge/bundle)",
        )
    missing = [name for name in (*PROGRAMS, str(INTERPRETER)) if not (bundle / name).is_file()]
    if missing:
        raise BundleError(
            f"{bundle} is not a host-side bundle: it has no {', '.join(missing)}",
            hint="give the directory scripts/build_bundle.py wrote (the image's"
            " /opt/smarter-edge/bundle)",
        )
    prefixes = {prefix_of(bundle / name) for name in PROGRAMS}
    if len(prefixes) != 1:
        raise BundleError(
            f"the programs in {bundle} name different interpreters ({sorted(map(str, prefixes))})",
            hint="rebuild the bundle with scripts/build_bundle.py",
        )
    return prefixes.pop()


def bundle_files(bundle: Path) -> list[PurePosixPath]:
    """The bundle's files, relative, in install order: bin/ last. Only regular files and
    directories are accepted, so nothing outside the bundle is copied through a link."""
    files: list[PurePosixPath] = []
    for directory, subdirs, names in os.walk(bundle):
        for name in [*subdirs, *names]:
            path = Path(directory) / name
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise BundleError(
                    f"{path} is not a regular file: a bundle holds only files and directories",
                    hint="rebuild the bundle with scripts/build_bundle.py",
                )
            files.append(PurePosixPath(path.relative_to(bundle).as_posix()))
    return sorted(files, key=lambda p: (p.parts[0] == INTERPRETER.parts[0], p))


def install_bundle(root: HostRoot, bundle: Path) -> BundleInstalled:
    """Install `bundle` at its prefix under `root`; what was written."""
    prefix = bundle_prefix(bundle)
    files = bundle_files(bundle)  # checked whole before anything is written
    target = root.path(prefix)
    written = 0
    for relative in files:
        if install_file(bundle / relative, target / relative):
            written += 1
    return BundleInstalled(prefix, written=written, unchanged=len(files) - written)


def install_file(source: Path, destination: Path) -> bool:
    """Replace `destination` by a copy of `source` (content and mode) through a temporary
    file in its directory and a rename; False when it already was that copy."""
    mode = stat.S_IMODE(source.stat().st_mode)
    try:
        if stat.S_IMODE(destination.stat().st_mode) == mode and filecmp.cmp(
            source, destination, shallow=False
        ):
            return False
    except FileNotFoundError:
        pass
    destination.parent.mkdir(parents=True, exist_ok=True)
    # A random dot-name: the other DaemonSet's installer may be writing the same file now.
    fd, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as stream:
            shutil.copyfileobj(stream, out, 1 << 20)
            os.fchmod(out.fileno(), mode)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


def install_program(root: HostRoot, bundle: Path, name: str, host_path: PurePosixPath) -> bool:
    """Put the bundle's program `name` at `host_path` (where containerd execs it), by rename;
    False when it already was there."""
    if name not in PROGRAMS:
        raise ValueError(f"{name} is not one of the bundle's programs {PROGRAMS}")
    return install_file(bundle / name, root.path(host_path))
