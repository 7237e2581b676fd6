"""Build the host-side bundle: smarter-cni and smarter-hybrid-runtime with their own interpreter.

containerd executes both programs on the host, where there may be no python3 at all, another
version, or musl instead of glibc. The bundle carries what they run on, and is installed as is
at PREFIX (default /opt/smarter-edge) by the DaemonSets' init containers:

  smarter-cni, smarter-hybrid-runtime  zipapps (build_zipapps.py), #! naming PREFIX/bin/python3
  bin/python3                          a CPython of this version (loader and RPATH in PREFIX/lib)
  lib/<ld.so>, lib/lib*.so*            the dynamic loader and every library the ELF files need
  lib/python3.11/**.pyc                the pure standard-library modules the programs import
  lib/python3.11/lib-dynload/*.so      the extension modules they import

The interpreter starts through the bundled loader and finds every library in PREFIX/lib first
(DT_RPATH, which also covers extension modules dlopen'ed later), so the host's libc never
matters. Which standard modules go in is traced, not listed by hand: an interpreter of this build
imports every module of the programs' packages from the built zipapps, plus every standard
module those packages name anywhere (also inside functions), and what ends up in sys.modules
from the standard library is shipped. PREFIX is baked into the #! lines and the interpreter's
ELF headers: a bundle runs only where it was built for.

The interpreter bundled is Debian's /usr/bin/python3.X by default (--python names another of
the same version): it links libpython in statically and is built with profile-guided and
link-time optimisation, which makes every exec ~10 ms faster than a shared-libpython build such
as pyenv's (bench/bench_cni.py and bench/bench_runtime.py show both forms). Its standard library
(/usr/lib/python3.X) is what gets shipped; the zipapps' bytecode is compiled here, so the two
interpreters must agree on the bytecode magic number. The programs' launchers (the code their
#! line runs before the archive is opened) are stored as that bytecode too, not as source to
compile at every exec, unless PREFIX is so long that the #! line would not fit (127 bytes).

Usage: python scripts/build_bundle.py [--out DIR] [--prefix PREFIX] [--python PATH]
       (default: out/bundle/, /opt/smarter-edge, /usr/bin/python3.X)
Needs patchelf (Debian package `patchelf`) and, to shrink the libraries, strip (binutils).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from build_zipapps import PROGRAMS, REPO, BuildError, _pyc, build_all
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

DEFAULT_PREFIX = PurePosixPath("/opt/smarter-edge")
# Debian's (package python3.X-minimal): static libpython, PGO + LTO; see the module docstring.
DEFAULT_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
STDLIB_SUBDIR = f"lib/python{sys.version_info.major}.{sys.version_info.minor}"
# Looked up by name at run time rather than imported: codecs a program's files, environment or
# arguments may use; and the hashes hashlib falls back to without OpenSSL (left out below).
ALWAYS = (
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_8",
    "_md5",
    "_sha1",
    "_sha256",
    "_sha512",
    "_blake2",
    "_sha3",
)
# Imported by the standard library only inside try/except ImportError (shutil, tarfile): left
# out, they take libbz2 and liblzma with them. (ssl stays: pyroute2 imports it unguarded.)
LEFT_OUT = frozenset({"_bz2", "bz2", "_lzma", "lzma", "_compression"})
# Dependencies whose imports inside functions are followed too, like our packages' (pyroute2
# imports multiprocessing and asyncio only once a socket is made).
SCANNED_DISTRIBUTIONS = ("structlog", "elftools", "pyroute2")
# What those imports name for debugging only (pyroute2 reaches even sqlite3 and unittest when
# it sets up a bridge: tests/e2e/test_bundle.py found each of them missing).
NOT_FOLLOWED = frozenset({"pdb"})
# Run in the DaemonSet's container from the image's own interpreter, never exec'd on the host.
CONTAINER_ONLY = frozenset({"cni.agent"})
# Run by the interpreter being bundled, with -I -S like the programs: imports `modules` (argv[1],
# comma-separated) from the zipapps (the rest of argv) and prints each loaded module's origin.
# It imports nothing itself, so sys.modules holds only what start-up and the modules load.
_TRACE = """\
import sys
sys.path[:0] = sys.argv[2:]
failed = []
for name in sys.argv[1].split(","):
    try:
        __import__(name)
    except Exception as error:
        failed.append((name, repr(error)))
print(repr(([(n, getattr(getattr(m, "__spec__", None), "origin", None))
             for n, m in sorted(sys.modules.items())], failed)))
"""


@dataclass(frozen=True)
class Interpreter:
    """Where the interpreter being bundled keeps its parts."""

    executable: Path
    stdlib: Path
    lib_dynload: Path
    # Its bytecode's magic number: the launchers' heads are stored as its bytecode.
    magic: bytes


# Asked of the interpreter to bundle (with -I -S, as the programs run it).
_DESCRIBE = """\
import importlib.util, os, sys, sysconfig
print(repr((tuple(sys.version_info[:2]), importlib.util.MAGIC_NUMBER,
            os.path.realpath(sys.executable), sysconfig.get_paths()["stdlib"],
            sysconfig.get_config_var("DESTSHARED"))))
"""


def interpreter_at(python: Path) -> Interpreter:
    """The interpreter at `python`, checked to run the bytecode this script compiles."""
    try:
        result = subprocess.run(
            [str(python), "-I", "-S", "-c", _DESCRIBE], capture_output=True, text=True, timeout=60
        )
    except OSError as error:
        raise BuildError(
            f"cannot run {python} ({error.strerror}): install it (apt-get install"
            f" python3.{sys.version_info.minor}) or name another with --python"
        ) from None
    if result.returncode != 0:
        raise BuildError(f"{python} does not describe itself: {result.stderr.strip()}")
    try:
        version, magic, executable, stdlib, lib_dynload = ast.literal_eval(result.stdout)
    except (ValueError, SyntaxError):
        raise BuildError(
            f"{python} is not a CPython interpreter: {result.stdout[:200]!r}"
        ) from None
    if version != tuple(sys.version_info[:2]) or magic != importlib.util.MAGIC_NUMBER:
        raise BuildError(
            f"{python} is Python {version[0]}.{version[1]} with bytecode magic {magic!r}; this"
            f" build compiles for {sys.version_info.major}.{sys.version_info.minor} ("
            f"{importlib.util.MAGIC_NUMBER!r}): run build_bundle.py with a Python of the"
            " interpreter's version, or name one of this version with --python"
        )
    return Interpreter(Path(executable), Path(stdlib), Path(str(lib_dynload)), bytes(magic))


def build_bundle(out: Path, prefix: PurePosixPath, interpreter: Interpreter) -> Path:
    """Write the bundle for `prefix` into `out` (made afresh, then moved into place)."""
    if not prefix.is_absolute():
        raise BuildError(f"--prefix must be an absolute path, not {prefix}")
    patchelf = shutil.which("patchelf")
    if patchelf is None:
        raise BuildError("patchelf is not installed: apt-get install patchelf")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        build_all(
            staging, interpreter=str(prefix / "bin/python3"), interpreter_magic=interpreter.magic
        )
        modules = traced_stdlib(interpreter, [staging / p.name for p in PROGRAMS])
        extensions = _copy_stdlib(modules, interpreter, staging / STDLIB_SUBDIR)
        _copy_elf_closure(
            interpreter.executable, extensions, staging, prefix, patchelf, shutil.which("strip")
        )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


# ---- which standard modules ------------------------------------------------------------------


def traced_stdlib(interpreter: Interpreter, zipapps: list[Path]) -> dict[str, Path]:
    """Standard module name -> its file, for what the programs' modules load."""
    ours = sorted(_our_modules())
    named = sorted(_stdlib_names_imported_by_our_packages())
    # Our packages import some of their dependencies' modules only inside functions (pyelftools
    # when a firmware ELF is read): imported here, what they import unguarded is shipped too.
    dependencies = sorted(_dependency_names_imported_by_our_packages())
    command = [
        str(interpreter.executable),
        "-I",
        "-S",
        "-c",
        _TRACE,
        ",".join([*ours, *dependencies, *named, *ALWAYS]),
        *map(str, zipapps),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd="/", timeout=120)
    if result.returncode != 0:
        raise BuildError(f"tracing the programs' imports failed: {result.stderr.strip()}")
    loaded, failed = ast.literal_eval(result.stdout)
    needed = {*named, *dependencies, *ALWAYS}
    missing = [f"{name}: {why}" for name, why in failed if name in needed]
    if missing:
        raise BuildError(f"standard modules the programs use are missing: {missing}")
    return _stdlib_files(loaded, interpreter)


def _our_modules() -> Iterator[str]:
    """Every module of the programs' own packages, except entry points (importing runs them)."""
    for package in sorted({p for program in PROGRAMS for p in program.packages}):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if parts[-1] == "__main__" or name in CONTAINER_ONLY:
                continue
            yield name


def _dependency_names_imported_by_our_packages() -> set[str]:
    """The modules of SCANNED_DISTRIBUTIONS that our packages import anywhere."""
    names: set[str] = set()
    for package in {p for program in PROGRAMS for p in program.packages}:
        for path in (REPO / package).rglob("*.py"):
            if ".".join(path.relative_to(REPO).with_suffix("").parts) in CONTAINER_ONLY:
                continue
            names |= _imported_names(ast.parse(path.read_text()))
    return {n for n in names if n.split(".", 1)[0] in SCANNED_DISTRIBUTIONS}


def _stdlib_names_imported_by_our_packages() -> set[str]:
    roots = [REPO / p for p in {p for program in PROGRAMS for p in program.packages}]
    for name in SCANNED_DISTRIBUTIONS:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise BuildError(f"{name} is not installed: run scripts/setup.sh")
        roots.append(Path(spec.origin).parent)
    names: set[str] = set()
    for root in roots:
        for path in root.rglob("*.py"):
            names |= _imported_names(ast.parse(path.read_text()))
    return {
        n
        for n in names
        if n.split(".", 1)[0] in sys.stdlib_module_names
        and n.split(".", 1)[0] not in NOT_FOLLOWED | LEFT_OUT
    }


# The fields that hold statements: an import statement is never inside an expression, so the
# walk skips expressions (ast.walk through pyroute2's sources took seconds of every build).
_STATEMENT_LISTS = ("body", "orelse", "finalbody", "handlers", "cases")


def _imported_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        for field in _STATEMENT_LISTS:
            children = getattr(node, field, None)
            if isinstance(children, list):
                pending.extend(child for child in children if isinstance(child, ast.AST))
    return names - {"__future__"}


def _stdlib_files(
    loaded: Iterable[tuple[str, str | None]], interpreter: Interpreter
) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for name, origin in loaded:
        if origin is None or origin in ("built-in", "frozen") or name in LEFT_OUT:
            continue
        path = Path(origin)
        if path.is_relative_to(interpreter.stdlib) and "site-packages" not in path.parts:
            files[name] = path
    return files


def _copy_stdlib(modules: dict[str, Path], interpreter: Interpreter, target: Path) -> list[Path]:
    """Compiled pure modules (no sources) and extension modules under `target`; the latter."""
    extensions: list[Path] = []
    for name, path in sorted(modules.items()):
        if path.suffix == ".so":
            destination = target / "lib-dynload" / path.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
            extensions.append(destination)
            continue
        relative = path.relative_to(interpreter.stdlib).with_suffix(".pyc")
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(_pyc(path.read_bytes(), f"{name} ({relative})"))
    # getpath's landmark: the interpreter recognises PREFIX by this file (see --help-env).
    landmark = target / "os.py"
    landmark.write_bytes((interpreter.stdlib / "os.py").read_bytes())
    return extensions


# ---- the ELF files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ElfLinks:
    """What the loader reads from one ELF file to map its dependencies."""

    interpreter: str | None
    needed: tuple[str, ...]
    search: tuple[str, ...]  # DT_RPATH and DT_RUNPATH entries, $ORIGIN expanded


def elf_links(path: Path) -> ElfLinks:
    with path.open("rb") as stream:
        elf = ELFFile(stream)
        interpreter = None
        for segment in elf.iter_segments():
            if isinstance(segment, InterpSegment):
                interpreter = str(segment.get_interp_name())
        needed: list[str] = []
        search: list[str] = []
        for section in elf.iter_sections():
            if not isinstance(section, DynamicSection):
                continue
            for tag in section.iter_tags():
                # pyelftools names each tag's string after the tag (DT_NEEDED -> .needed).
                kind = str(tag.entry.d_tag)
                if kind == "DT_NEEDED":
                    needed.append(str(getattr(tag, "needed")))  # noqa: B009
                elif kind in ("DT_RPATH", "DT_RUNPATH"):
                    value = str(getattr(tag, kind.removeprefix("DT_").lower()))
                    search += [
                        re.sub(r"\$\{?ORIGIN\}?", str(path.parent), entry)
                        for entry in value.split(":")
                        if entry
                    ]
    return ElfLinks(interpreter, tuple(needed), tuple(search))


def _loader_cache() -> dict[str, Path]:
    """soname -> path from the loader's cache (`ldconfig -p`), for this machine's word size."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    result = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=True)
    wanted = "x86-64" if sys.maxsize > 2**32 and os.uname().machine == "x86_64" else ""
    cache: dict[str, Path] = {}
    for line in result.stdout.splitlines()[1:]:
        match = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
        if match and (wanted in match.group(2) or os.uname().machine != "x86_64"):
            cache.setdefault(match.group(1), Path(match.group(3)))
    return cache


def resolve(soname: str, links: ElfLinks, cache: dict[str, Path]) -> Path:
    """Where the loader finds `soname` for an object with `links` on this machine."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    defaults = [f"/lib/{multiarch}", f"/usr/lib/{multiarch}", "/lib", "/usr/lib"]
    for directory in [*links.search]:
        if (Path(directory) / soname).is_file():
            return Path(directory) / soname
    if soname in cache:
        return cache[soname]
    for directory in defaults:
        if (Path(directory) / soname).is_file():
            return Path(directory) / soname
    raise BuildError(f"the loader would not find {soname}: install the library that provides it")


def _copy_elf_closure(
    executable: Path,
    extensions: list[Path],
    out: Path,
    prefix: PurePosixPath,
    patchelf: str,
    strip: str | None,
) -> None:
    """The interpreter, the loader and every library needed, each pointed at PREFIX/lib."""
    lib = out / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    cache = _loader_cache()
    executable_links = elf_links(executable)
    if executable_links.interpreter is None:
        raise BuildError(f"{executable} has no PT_INTERP: a static interpreter is not supported")
    loader = Path(executable_links.interpreter)
    pending: list[tuple[Path, ElfLinks]] = [(executable, executable_links)]
    pending += [(extension, elf_links(extension)) for extension in extensions]
    copied: dict[str, Path] = {}
    while pending:
        _, links = pending.pop()
        for soname in links.needed:
            if soname in copied or soname == loader.name:
                continue
            source = resolve(soname, links, cache)
            copied[soname] = lib / soname
            shutil.copyfile(os.path.realpath(source), lib / soname)
            pending.append((lib / soname, elf_links(lib / soname)))
    shutil.copyfile(os.path.realpath(loader), lib / loader.name)
    python = out / "bin" / "python3"
    python.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(executable, python)
    rpath = str(prefix / "lib")
    for path in [python, *copied.values(), *extensions]:
        if strip is not None:
            _run([strip, "--strip-unneeded", str(path)])
        _run([patchelf, "--force-rpath", "--set-rpath", rpath, str(path)])
    _run([patchelf, "--set-interpreter", str(prefix / "lib" / loader.name), str(python)])
    for path in [python, lib / loader.name, *copied.values(), *extensions]:
        path.chmod(0o755)


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"{' '.join(command)} failed: {result.stderr.strip()}")


def size(tree: Path) -> int:
    return sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=REPO / "out" / "bundle", help="output directory (out/bundle/)"
    )
    parser.add_argument(
        "--prefix",
        type=PurePosixPath,
        default=DEFAULT_PREFIX,
        help=f"where the bundle is installed on a node ({DEFAULT_PREFIX})",
    )
    parser.add_argument(
        "--python",
        type=Path,
        default=DEFAULT_PYTHON,
        help=f"the interpreter to bundle, of this script's Python version ({DEFAULT_PYTHON})",
    )
    args = parser.parse_args(argv)
    try:
        out = build_bundle(args.out, args.prefix, interpreter_at(args.python))
    except BuildError as error:
        print(f"build_bundle: {error}", file=sys.stderr)
        return 1
    print(f"{out} for {args.prefix} ({size(out) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
