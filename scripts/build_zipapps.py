"""Build the host-side programs as single-file zipapps run by the host's python3.

containerd executes `smarter-cni` and `smarter-hybrid-runtime` on the host, outside every
container, so each ships as one executable file: our packages plus their pure-Python
dependencies, copied from this environment's site-packages. The archives are deterministic
(sorted entries, fixed timestamps, unchecked-hash bytecode), so the same tree gives the same bytes.

Usage: python scripts/build_zipapps.py [--out DIR]   (default: out/host/)
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import io
import marshal
import os
import re
import stat
import sys
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parent.parent
# -I: the host's PYTHONPATH, user site and current directory never change what runs; -S: no site
# import (everything the program needs is inside the archive), ~3 ms less per exec.
SHEBANG = b"#!/usr/bin/env -S python3 -I -S\n"
# A program with a launcher runs it before the archive is opened: the shebang has python3 exec
# the file's head (this line and the launcher's source, {size} bytes), and only what the
# launcher does not decide imports from the archive. Running a zipapp the usual way costs
# runpy (importlib.util, contextlib...) and zipimport reading the whole central directory.
LAUNCHER_SHEBANG = (
    "#!/usr/bin/env -S python3 -I -S -c"
    " 'import sys;exec(open(sys.argv[1],\"rb\").read({size}))'\n"
)
# The same two heads naming an interpreter by absolute path (the bundle's, scripts/build_bundle.py):
# Linux passes everything after the path as one argument, so the options and the code are one
# word, `-IScCODE` (a space after `c` would be an indent to the compiler).
DIRECT_SHEBANG = "#!{interpreter} -IS\n"
DIRECT_LAUNCHER_SHEBANG = (
    '#!{interpreter} -IScimport sys;exec(open(sys.argv[1],"rb").read({{size}}))\n'
)
# The bundle's launcher head as its interpreter's bytecode: the line, then the launcher's code
# object marshal'd (bytes {start} to {size}). Loading it costs ~0.1 ms where compiling the source
# costs ~1.3 ms (route.py) to ~2 ms (cni/client.py) at every exec. The interpreter is built with
# the programs, so the build knows its bytecode (`interpreter_magic`); python3 on a host may be
# any version, so the zipapps it runs keep a source head. marshal is built in and always loaded.
DIRECT_BYTECODE_LAUNCHER_SHEBANG = (
    "#!{interpreter} -IScimport sys,marshal as m;"
    'exec(m.loads(open(sys.argv[1],"rb").read({{size}})[{{start}}:]))\n'
)
# The launcher's line the build rewrites to say where its chunk lies in the file.
_CHUNK_PLACE = b"CHUNK_PLACE = None\n"
# Linux reads at most this much of a `#!` line (BINPRM_BUF_SIZE, since 5.1; 128 before).
_SHEBANG_LIMIT = 127
# 1980-01-01, the earliest time a zip entry can hold: no build time leaks into the archive.
FIXED_DATE = (1980, 1, 1, 0, 0, 0)
# Never shipped to the host: compiled extensions, or not needed there.
FORBIDDEN_TOP_LEVEL = frozenset({"grpc", "grpc_tools", "google", "yaml", "_yaml", "watchdog"})


@dataclass(frozen=True)
class Program:
    """One zipapp: its file name, entry module, our packages and third-party distributions."""

    name: str
    entry_module: str
    packages: tuple[str, ...]
    distributions: tuple[str, ...]
    # A stdlib-only module whose `main()` runs first, from the file's head (see LAUNCHER_SHEBANG).
    launcher: str | None = None
    # `module:function`, a decision the launcher makes for some calls only: its compacted source
    # follows the launcher's in the file, read and run by the launcher when a call needs it (see
    # `_launcher_head`), so that call imports nothing from the archive either.
    launcher_chunk: str | None = None


PROGRAMS = (
    Program(
        name="smarter-cni",
        entry_module="cni.__main__",
        packages=("cni", "smarter_common"),
        distributions=("pyroute2", "structlog"),
        launcher="cni.client",
    ),
    Program(
        name="smarter-hybrid-runtime",
        entry_module="runtime_handler.__main__",
        packages=("runtime_handler", "smarter_common"),
        distributions=("pyelftools", "structlog"),
        launcher="runtime_handler.route",
        launcher_chunk="runtime_handler.bundle:create_is_runcs",
    ),
)


class BuildError(Exception):
    """The zipapps cannot be built from this tree or environment."""


def build_all(
    out_dir: Path, interpreter: str | None = None, interpreter_magic: bytes | None = None
) -> list[Path]:
    """Build every program into `out_dir`; the paths of the written files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        build(program, out_dir / program.name, interpreter, interpreter_magic)
        for program in PROGRAMS
    ]


def build(
    program: Program,
    target: Path,
    interpreter: str | None = None,
    interpreter_magic: bytes | None = None,
) -> Path:
    """Write `program` as an executable zipapp at `target` (replaced atomically).

    Its `#!` line finds python3 through PATH, or names `interpreter` (an absolute path). With
    `interpreter_magic` (the bytecode magic number of the interpreter at `interpreter`), a
    launcher's head is stored as bytecode when its `#!` line fits, as source otherwise."""
    if interpreter_magic is not None:
        if interpreter is None:
            raise BuildError("a bytecode head needs the interpreter named by absolute path")
        if interpreter_magic != importlib.util.MAGIC_NUMBER:
            raise BuildError(
                f"{interpreter} runs bytecode {interpreter_magic!r}, but this build compiles"
                f" {importlib.util.MAGIC_NUMBER!r} (Python {sys.version_info.major}."
                f"{sys.version_info.minor}): run the build with a Python of the bundled"
                " interpreter's version"
            )
    entries: dict[str, bytes] = {}
    for package in program.packages:
        entries.update(_package_files(package))
    for distribution in _with_requirements(program.distributions):
        entries.update(_distribution_files(distribution))
    if program.launcher is None:
        entries["__main__.py"] = (
            f'"""{program.name}: runs {program.entry_module}.main()."""\n'
            "import sys\n\n"
            f"from {program.entry_module} import main\n\n"
            "sys.exit(main())\n"
        ).encode()
        head = (
            SHEBANG
            if interpreter is None
            else DIRECT_SHEBANG.format(interpreter=interpreter).encode()
        )
    else:
        # `python3 <zipapp>` still works, through runpy: the same launcher, then the program.
        entries["__main__.py"] = (
            f'"""{program.name}: runs {program.launcher}.main()."""\n'
            f"from {program.launcher} import main\n\n"
            "main()\n"
        ).encode()
        shebang = (
            LAUNCHER_SHEBANG
            if interpreter is None
            else DIRECT_LAUNCHER_SHEBANG.format(interpreter=interpreter)
        )
        bytecode_shebang = (
            None
            if interpreter is None or interpreter_magic is None
            else DIRECT_BYTECODE_LAUNCHER_SHEBANG.format(interpreter=interpreter)
        )
        head = _launcher_head(program.launcher, shebang, program.launcher_chunk, bytecode_shebang)
    leaked = {name.split("/", 1)[0] for name in entries} & FORBIDDEN_TOP_LEVEL
    if leaked:
        raise BuildError(
            f"{program.name} would ship {sorted(leaked)}, which must not reach the host"
        )
    archive = _zip_bytes(entries)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_bytes(head + archive)
    temporary.chmod(0o755)
    os.replace(temporary, target)
    return target


def _launcher_head(
    module: str,
    shebang: str = LAUNCHER_SHEBANG,
    chunk: str | None = None,
    bytecode_shebang: str | None = None,
) -> bytes:
    """The shebang that execs the file's first bytes, then the launcher, then the chunk of
    `chunk` (`module:function`) when there is one.

    The launcher is its source, or with `bytecode_shebang` (DIRECT_BYTECODE_LAUNCHER_SHEBANG)
    its code object marshal'd, unless that line is over _SHEBANG_LIMIT (a long --prefix): then
    the source head's shorter line. Either is compiled from the source without docstrings,
    comments, annotations, `from __future__` and `if TYPE_CHECKING:` blocks: a source head is
    compiled at every exec (no bytecode cache for exec'd text), ~0.3 ms per KB in a fresh
    interpreter. The archive keeps the module as written.
    The chunk is past the bytes the shebang execs, so only the calls that need it read it: the
    function and the module-level names it uses, compacted alike, as this interpreter's
    bytecode (the magic number, then marshal's bytes: ~0.1 ms to load where compiling the
    source would cost ~3 ms) followed by the source, compiled by an interpreter of another
    bytecode. The chunk is the same behind both heads, so the launcher reads it one way. The
    launcher finds it from its `CHUNK_PLACE = None` line, which the build rewrites to
    (offset, bytecode size, source size).
    """
    source = _compact_source(_module_text(module))
    chunk_bytes, place = b"", "None"
    if chunk is not None:
        if source.count(_CHUNK_PLACE) != 1:
            raise BuildError(f"{module} needs one `{_CHUNK_PLACE.decode().strip()}` line")
        chunk_module, _, function = chunk.partition(":")
        chunk_source = _compact_source(_module_text(chunk_module), keep=function)
        code = compile(chunk_source, chunk_module.replace(".", "/") + ".py", "exec",
                       dont_inherit=True, optimize=0)  # fmt: skip
        bytecode = importlib.util.MAGIC_NUMBER + marshal.dumps(code)
        chunk_bytes = bytecode + chunk_source
        place = f"({{size}}, {len(bytecode)}, {len(chunk_source)})"
    if bytecode_shebang is not None:
        filename = module.replace(".", "/") + ".py"
        line, body = _bytecode_head(source, place, bytecode_shebang, filename)
        if len(line) <= _SHEBANG_LIMIT:
            return line + body + chunk_bytes
    line, body = _source_head(source, place, shebang)
    if len(line) > _SHEBANG_LIMIT:
        raise BuildError(f"the launcher's #! line is {len(line)} bytes, over {_SHEBANG_LIMIT}")
    return line + body + chunk_bytes


def _source_head(source: bytes, place: str, shebang: str) -> tuple[bytes, bytes]:
    """The `#!` line and the source it execs, which says where the head ends."""
    size = 0
    while True:
        line = shebang.format(size=size).encode()
        placed = _placed(source, place, size)
        if len(line) + len(placed) == size:
            return line, placed
        size = len(line) + len(placed)


def _bytecode_head(source: bytes, place: str, shebang: str, filename: str) -> tuple[bytes, bytes]:
    """The `#!` line and the marshal'd code it loads (bytes `start` to `size` of the file)."""
    start = size = 0
    # The code holds where the head ends, the line holds the code's size: a few rounds settle
    # both (marshal writes an int in a fixed width, so only the line's digits can move).
    for _ in range(8):
        line = shebang.format(size=size, start=start).encode()
        code = compile(_placed(source, place, size), filename, "exec", dont_inherit=True,
                       optimize=0)  # fmt: skip
        body = marshal.dumps(code)
        if (start, size) == (len(line), len(line) + len(body)):
            return line, body
        start, size = len(line), len(line) + len(body)
    raise BuildError(f"the bytecode head of {filename} does not settle on a size")


def _placed(source: bytes, place: str, size: int) -> bytes:
    """`source` with its `CHUNK_PLACE` line saying `place`, the chunk being at `size`."""
    return source.replace(_CHUNK_PLACE, f"CHUNK_PLACE = {place.format(size=size)}\n".encode())


def _module_text(module: str) -> str:
    return (REPO / (module.replace(".", "/") + ".py")).read_text()


def _compact_source(text: str, keep: str | None = None) -> bytes:
    """`text` as the same program without what only readers and the type checker use:
    docstrings, comments, annotations and `if TYPE_CHECKING:` blocks; with `keep`, only the
    module-level statements that define `keep` and, transitively, the names it uses."""
    tree = _Compactor().visit(ast.parse(text))
    if keep is not None:
        tree.body = _needed_by(tree.body, keep)
    return (ast.unparse(ast.fix_missing_locations(tree)) + "\n").encode()


def _needed_by(body: list[ast.stmt], name: str) -> list[ast.stmt]:
    """The statements of `body` that bind `name` or a module-level name it uses, in order."""
    binders: dict[str, list[int]] = {}
    for index, statement in enumerate(body):
        for bound in _bound_names(statement):
            binders.setdefault(bound, []).append(index)
    if name not in binders:
        raise BuildError(f"the launcher chunk's {name!r} is not defined at module level")
    needed: set[int] = set()
    pending = [name]
    while pending:
        for index in binders.get(pending.pop(), []):
            if index not in needed:
                needed.add(index)
                pending.extend(
                    node.id for node in ast.walk(body[index]) if isinstance(node, ast.Name)
                )
    return [body[index] for index in sorted(needed)]


def _bound_names(statement: ast.stmt) -> Iterator[str]:
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        yield statement.name
    elif isinstance(statement, ast.Import | ast.ImportFrom):
        for alias in statement.names:
            yield (alias.asname or alias.name).split(".", 1)[0]
    elif isinstance(statement, ast.Assign):
        for target in statement.targets:
            yield from (node.id for node in ast.walk(target) if isinstance(node, ast.Name))


class _Compactor(ast.NodeTransformer):
    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:]
        if isinstance(body, list) and not node.body:  # type: ignore[attr-defined]
            node.body = [ast.Pass()]  # type: ignore[attr-defined]
        return node

    def visit_If(self, node: ast.If) -> ast.AST | None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" and not node.orelse:
            return None
        return self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST | None:
        # `annotations` is the only future a launcher may use, and its annotations are gone:
        # the statement would still import the __future__ module at every exec.
        return None if node.module == "__future__" else node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST | None:
        if node.value is None:
            return None
        return ast.copy_location(ast.Assign(targets=[node.target], value=node.value), node)

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.returns = None
        return self.generic_visit(node)


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    files = _with_bytecode(entries)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            archive.writestr(info, files[name])
    return buffer.getvalue()


def _with_bytecode(entries: dict[str, bytes]) -> dict[str, bytes]:
    """`entries` plus a `.pyc` beside each module, so the host does not compile on every exec.

    zipimport reads `mod.pyc` next to `mod.py` (not `__pycache__`); an unchecked-hash pyc is
    used as is by the interpreter version it was made for and ignored by any other.
    """
    result = dict(entries)
    for name, source in entries.items():
        if name.endswith(".py"):
            result[name + "c"] = _pyc(source, name)
    return result


def _pyc(source: bytes, name: str) -> bytes:
    code = compile(source, name, "exec", dont_inherit=True, optimize=0)
    flags = 0b01  # hash-based, check_source off
    source_hash = importlib.util.source_hash(source)
    header = importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little") + source_hash
    return header + marshal.dumps(code)


def _package_files(package: str) -> Iterator[tuple[str, bytes]]:
    root = REPO / package
    if not (root / "__init__.py").is_file():
        raise BuildError(f"package {package} not found in {REPO}")
    yield from _tree(root, PurePosixPath(package))


def _tree(root: Path, prefix: PurePosixPath) -> Iterator[tuple[str, bytes]]:
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_dir() or _skipped(relative.parts):
            continue
        yield str(prefix / relative.as_posix()), path.read_bytes()


def _skipped(parts: Iterable[str]) -> bool:
    return any(
        part == "__pycache__" or part.endswith((".pyc", ".pyo", ".so")) or part.startswith(".")
        for part in parts
    )


def _with_requirements(names: Iterable[str]) -> list[importlib.metadata.Distribution]:
    """The distributions `names` and every requirement they have on this interpreter."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    pending = list(names)
    while pending:
        name = _normalise(pending.pop())
        if name in seen:
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError as error:
            raise BuildError(f"{name} is not installed: run scripts/setup.sh") from error
        seen[name] = distribution
        pending.extend(_applicable_requirements(distribution.requires or []))
    return [seen[name] for name in sorted(seen)]


def _applicable_requirements(requirements: Iterable[str]) -> Iterator[str]:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a bare venv (e.g. the image build) has only pip's own copy
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]

    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            yield requirement.name


def _distribution_files(
    distribution: importlib.metadata.Distribution,
) -> Iterator[tuple[str, bytes]]:
    for file in distribution.files or []:
        parts = PurePosixPath(str(file)).parts
        if not parts or parts[0] == ".." or parts[0].endswith((".dist-info", ".egg-info")):
            continue
        if _skipped(parts):
            continue
        path = Path(str(distribution.locate_file(file)))
        if path.is_file():
            yield "/".join(parts), path.read_bytes()


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=REPO / "out" / "host", help="output directory (out/host/)"
    )
    args = parser.parse_args(argv)
    try:
        for path in build_all(args.out):
            print(f"{path} ({path.stat().st_size // 1024} KiB)")
    except BuildError as error:
        print(f"build_zipapps: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
