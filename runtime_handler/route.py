"""The zipapp's first code, and the one routing table: who answers a call about a container.

A call about a container the runtime did not create (a sandbox, a sidecar) is runc's; one about
a firmware container (a directory under `<--root>/smarter-hybrid/`) is the runtime's. That
decision (`owner`), the commands it applies to (`CONTAINER_COMMANDS`) and the syntax of runc's
options (`parse_options`) are defined here once: runtime_handler.__main__ and
runtime_handler.runc_cli use them as the launcher does.

The zipapp's shebang runs this file's text before the archive is opened (see
scripts/build_zipapps.py), so the commonest calls (`start`, `state`, `kill`, `delete`... of a
sandbox or sidecar) cost no zipimport of the archive's directory, no runpy and no import: only
`posix` and `sys`, which the interpreter loaded at start. The `create` of a plain Linux container
is decided here too (`create_is_runcs`: config.json read with `posix` and CPython's C JSON
scanner, the entrypoint found in the rootfs and its ELF header peeked at), since every
container of every pod is created so. Every other call (list, firmware containers, a create
that may be firmware or a sidecar of a pod holding firmware, malformed ids) is left to
runtime_handler.__main__.main(). The rules of this exec'd path: docs/contributing.md.
"""

import posix
import sys

# No `typing` and no `from __future__` (each an import); the checker alone reads these names,
# and the annotations that need them are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO, Literal

    TakesValue = Callable[[str], bool]
    ByteOrder = Literal["little", "big"]

DEFAULT_ROOT = "/run/runc"
# runtime_handler.state.STATE_SUBDIR (restated: importing it would cost the launcher its
# speed); tests/test_restated_constants.py holds them equal.
STATE_DIRECTORY = "smarter-hybrid"
# Who answers a call about one container.
RUNC = "runc"
RUNTIME = "runtime"
REFUSED = "refused"  # a malformed id: refused in runc's words before any path is built from it
# The pods holding firmware: `<root>/smarter-hybrid/.@pods/<sandbox-id>/<firmware container id>`
# (runtime_handler.data_channels writes it). '@' is in no container id, so no container's
# directory has that name; the dot keeps it out of listings of the containers' directories.
PODS_DIRECTORY = ".@pods"

GLOBAL_VALUE_OPTIONS = frozenset({"log", "log-format", "root", "criu", "rootless"})
# The commands about one existing container: a firmware container's are the runtime's, any
# other's runc's (`owner`).
CONTAINER_COMMANDS = frozenset(
    {
        "start", "state", "kill", "delete", "pause", "resume", "ps", "events", "exec", "update",
        "checkpoint", "restore",
    }
)
# Those the launcher decides itself, each with its options that take a value (the rest are
# switches); runtime_handler.runc_cli adds the other commands' options.
LAUNCHER_VALUE_OPTIONS: dict[str, frozenset[str]] = {
    "start": frozenset(),
    "state": frozenset(),
    "kill": frozenset(),
    "delete": frozenset(),
    "pause": frozenset(),
    "resume": frozenset(),
    "ps": frozenset({"format", "f"}),
    "events": frozenset({"interval"}),
    "create": frozenset({"bundle", "b", "console-socket", "pid-file", "preserve-fds"}),
}

# runc's container id rule (libcontainer's idRegex `^[\w+-\.]+$`, Go's ASCII `\w`), with `.`
# and `..` refused; checked without `re`, which is not loaded on the hot path.
ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")

# runtime_handler.settings (restated, held equal by tests/test_restated_constants.py): the
# variable naming runc, the names its settings file may hold, and the file's size limit.
RUNC_ENV = "SMARTER_RUNC"
SETTINGS_NAMES = frozenset(
    {
        "SMARTER_RUNTIME_HOST_ROOT", "SMARTER_RUNC", "SMARTER_START_TIMEOUT",
        "SMARTER_CONSOLE_TIMEOUT", "SMARTER_LOG_LEVEL", "SMARTER_CHANNEL_TIMEOUT",
    }
)
SETTINGS_SUFFIX = ".conf"
SETTINGS_MAX_BYTES = 65536
# Where runc is looked for when no setting names it (runtime_handler.passthrough uses these).
RUNC_CANDIDATES = ("/usr/sbin/runc", "/usr/bin/runc")
_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_S_IFREG = 0o100000

# What `create` reads of a bundle (runtime_handler.bundle builds its Bundle from the same).
ANNOTATION_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
ANNOTATION_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
FIRMWARE_SUFFIX = ".elf"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# smarter_common.firmware_elf.ELF_MAGIC, restated (tests/test_restated_constants.py).
ELF_MAGIC = b"\x7fELF"
_ELFCLASS32 = 1
_EM_ARM = 40
_ET_DYN = 3
_PT_INTERP = 3
_ELF32_HEADER = 52
_MAX_PROGRAM_HEADERS = 256
_MAX_SYMLINKS = 40
_READ_CHUNK = 65536


def id_problem(container_id: str | None) -> str | None:
    """runc's complaint about `container_id` (its words), or None when it is a valid id."""
    if not container_id:
        return "container id cannot be empty"
    if container_id in (".", "..") or not ID_CHARACTERS.issuperset(container_id):
        return "invalid container ID format"
    return None


def owner(command: str | None, root: str, container_id: str | None) -> str:
    """Who answers `command` about `container_id` under runc's `--root`: RUNC, RUNTIME or
    REFUSED. Not for create/run (decided by the bundle) nor list (both runc's and ours)."""
    if command not in CONTAINER_COMMANDS or not container_id:
        return RUNC  # no id: runc's usage error
    if id_problem(container_id):
        return REFUSED
    try:
        mode = posix.stat(f"{root}/{STATE_DIRECTORY}/{container_id}").st_mode
    except OSError:
        return RUNC
    return RUNTIME if mode & _S_IFMT == _S_IFDIR else RUNC


def pod_holds_firmware(root: str, sandbox_id: str | None) -> bool:
    """Whether the pod of sandbox `sandbox_id` holds a firmware container (one stat): only
    then does the create of its Linux containers look for data channels."""
    if not sandbox_id or id_problem(sandbox_id):
        return False
    try:
        mode = posix.stat(f"{root}/{STATE_DIRECTORY}/{PODS_DIRECTORY}/{sandbox_id}").st_mode
    except OSError:
        return False
    return mode & _S_IFMT == _S_IFDIR


def parse_options(
    words: list[str], index: int, takes_value: "TakesValue"
) -> tuple[dict[str, str | bool], int]:
    """runc's options in `words` from `index` on, and the index of the first word after them.

    Go's flag rules as runc's CLI library applies them: `-x` and `--x` are the same, a value is
    the next word or follows `=`, a switch is True, and parsing stops at the first positional
    word or after `--`. `takes_value(name)` says whether an option takes a value.
    """
    options: dict[str, str | bool] = {}
    while index < len(words):
        word = words[index]
        if word == "--":
            return options, index + 1
        if not word.startswith("-") or word == "-":
            break
        name, has_value, value = word.lstrip("-").partition("=")
        if has_value:
            options[name] = value
        elif takes_value(name) and index + 1 < len(words):
            index += 1
            options[name] = words[index]
        else:
            options[name] = True
        index += 1
    return options, index


def root_of(global_options: dict[str, str | bool]) -> str:
    """runc's state directory from its global options."""
    root = global_options.get("root")
    return root if isinstance(root, str) and root else DEFAULT_ROOT


def is_runcs(argv: list[str]) -> bool:
    """Whether runc's arguments `argv` (no program name) are a call that is runc's, decided as
    runtime_handler.__main__.main() decides it, for the commands in LAUNCHER_VALUE_OPTIONS."""
    global_options, index = parse_options(argv, 0, GLOBAL_VALUE_OPTIONS.__contains__)
    values = LAUNCHER_VALUE_OPTIONS.get(argv[index]) if index < len(argv) else None
    if values is None:
        return False  # left to main()
    command = argv[index]
    options, index = parse_options(argv, index + 1, values.__contains__)
    container_id = argv[index] if index < len(argv) else None
    if command == "create":
        return create_is_runcs(root_of(global_options), options, container_id)
    return owner(command, root_of(global_options), container_id) == RUNC


def create_is_runcs(
    state_root: str, options: dict[str, str | bool], container_id: str | None
) -> bool:
    """Whether `create` of `container_id` is plainly runc's, decided as main() decides it.

    True for a sandbox, and for a container whose entrypoint is missing or no fixed-address
    32-bit ARM executable, unless it declares itself firmware (an entrypoint ending in `.elf`)
    or its pod holds firmware (main() gives it the pod's data channels). A config.json that
    cannot be read is runc's to report. Whatever needs more than a look (a document the C
    scanner does not take whole, a field of an unexpected type) is left to main().
    """
    if not container_id or id_problem(container_id):
        return False
    bundle = options.get("bundle", options.get("b", "."))
    if not isinstance(bundle, str):
        return False
    bundle = normpath(bundle if bundle.startswith("/") else f"{posix.getcwd()}/{bundle}")
    try:
        text = _read_file(f"{bundle}/config.json").decode()
    except OSError:
        return True  # main(): "an unreadable bundle is runc's to report"
    except UnicodeDecodeError:
        return False
    found, config = scan_json(text)
    if not found or not isinstance(config, dict):
        return False
    process = config.get("process") or {}
    root = config.get("root") or {}
    annotations = config.get("annotations") or {}
    if not (isinstance(process, dict) and isinstance(root, dict) and isinstance(annotations, dict)):
        return False
    root_path = root.get("path")
    args, env, cwd = process.get("args") or [], process.get("env") or [], process.get("cwd") or "/"
    if not (_all_strings(args) and _all_strings(env) and isinstance(cwd, str)):
        return False
    if not (root_path is None or isinstance(root_path, str)):
        return False
    container_type = annotations.get(ANNOTATION_CONTAINER_TYPE)
    if container_type == "sandbox":
        return True
    sandbox_id = annotations.get(ANNOTATION_SANDBOX_ID)
    if (
        container_type == "container"
        and isinstance(sandbox_id, str)
        and pod_holds_firmware(state_root, sandbox_id)
    ):
        return False  # main() gives the pod's data channels to its Linux containers
    entry = args[0] if args else ""
    if not entry:
        return True
    if entry.endswith(FIRMWARE_SUFFIX):
        return False
    rootfs = normpath(_join(bundle, root_path or "rootfs"))
    search_path = DEFAULT_PATH
    for item in env:
        name, _, value = item.partition("=")
        if name == "PATH":
            search_path = value
    path = entrypoint_path(rootfs, cwd, entry, search_path)
    return path is None or not peek_elf(path)[1]


def entrypoint_path(rootfs: str, cwd: str, entry: str, search_path: str) -> str | None:
    """The host path of a container's entrypoint `entry`, found as the container's exec finds
    it (relative to `cwd` when it holds a `/`, else along `search_path`); None when missing."""
    if "/" in entry:
        found = resolve_in_rootfs(rootfs, _join(cwd, entry))
        return found if found and _is_file(found) else None
    for directory in search_path.split(":"):
        found = resolve_in_rootfs(rootfs, _join(_join("/", directory), entry))
        if found and _is_file(found):
            return found
    return None


def resolve_in_rootfs(rootfs: str, container_path: str) -> str | None:
    """The host path of `container_path` with symlinks followed as the container would see them.

    Absolute link targets are taken relative to `rootfs`, and `..` never climbs above it.
    None when a component is missing or links loop.
    """
    pending = [part for part in container_path.split("/") if part and part != "."]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = _join(rootfs, *resolved, part)
        try:
            target = posix.readlink(candidate)
        except FileNotFoundError:
            return None
        except OSError:
            # Not a link (EINVAL) or not a directory on the way (ENOTDIR).
            try:
                posix.lstat(candidate)
            except OSError:
                return None
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            return None
        target_parts = [p for p in target.split("/") if p and p != "."]
        if target.startswith("/"):
            resolved = []
        pending = target_parts + pending
    return _join(rootfs, *resolved)


def peek_elf(path: str) -> tuple[bool, bool]:
    """(is an ELF, may be firmware) from the ELF header and program headers, without pyelftools.

    Firmware is a 32-bit ARM executable loaded at fixed addresses by remoteproc, with no
    program interpreter. So a position-independent executable or a dynamically linked one (a
    Linux program on a 32-bit ARM host, as most of Raspberry Pi OS's are) is not firmware, and
    only the rest is worth pyelftools (~50 ms to import here, several times that on a Pi).
    """
    try:
        with open(path, "rb") as stream:
            head = stream.read(_ELF32_HEADER)
            if head[:4] != ELF_MAGIC:
                return False, False
            if len(head) < _ELF32_HEADER or head[4] != _ELFCLASS32:
                return True, False
            order: ByteOrder = "little" if head[5] == 1 else "big"
            if int.from_bytes(head[18:20], order) != _EM_ARM:
                return True, False
            if int.from_bytes(head[16:18], order) == _ET_DYN:
                return True, False
            return True, not _has_interpreter(stream, head, order)
    except OSError:
        return False, False


def _has_interpreter(stream: "BinaryIO", head: bytes, order: "ByteOrder") -> bool:
    """Whether a 32-bit ELF names a program interpreter (a PT_INTERP program header)."""
    offset = int.from_bytes(head[28:32], order)
    entry_size = int.from_bytes(head[42:44], order)
    count = int.from_bytes(head[44:46], order)
    if not offset or entry_size < 4 or count > _MAX_PROGRAM_HEADERS:
        return False
    stream.seek(offset)
    table = stream.read(entry_size * count)
    return any(
        int.from_bytes(table[start : start + 4], order) == _PT_INTERP
        for start in range(0, len(table) - 3, entry_size)
    )


class _ScanContext:
    """The settings `_json.make_scanner` reads: those of a plain `json.loads`."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


def scan_json(text: str) -> tuple[bool, object]:
    """(True, the document) when CPython's C scanner (`_json`) takes `text` whole, as
    `json.loads` would, without importing `json` (whose decoder pulls in `re`, ~5 ms);
    (False, None) for anything else, which `json.loads` then judges."""
    document = text.strip()
    try:
        from _json import make_scanner

        scan = make_scanner(_ScanContext())  # type: ignore[arg-type]
        value, end = scan(document, 0)
    except (ImportError, StopIteration, ValueError, SystemError, RecursionError):
        # SystemError: the C scanner fails so on some malformed input (a trailing comma)
        # when driven directly.
        return False, None
    return (True, value) if end == len(document) else (False, None)


def normpath(path: str) -> str:
    """`posixpath.normpath` of an absolute `path`, without importing it."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    # POSIX keeps a leading `//` apart; posixpath does too.
    lead = "//" if path.startswith("//") and not path.startswith("///") else "/"
    return lead + "/".join(parts)


def _join(first: str, *rest: str) -> str:
    """`posixpath.join` for parts that hold no `/` but a leading one."""
    joined = first
    for part in rest:
        if part.startswith("/"):
            joined = part
        elif not joined or joined.endswith("/"):
            joined += part
        else:
            joined += "/" + part
    return joined


def _is_file(path: str) -> bool:
    try:
        return posix.stat(path).st_mode & _S_IFMT == _S_IFREG
    except OSError:
        return False


def _all_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _read_file(path: str) -> bytes:
    fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        chunks = []
        while chunk := posix.read(fd, _READ_CHUNK):
            chunks.append(chunk)
    finally:
        posix.close(fd)
    return b"".join(chunks)


def _runc(archive: str) -> str | None:
    """The runc to exec, as runtime_handler.passthrough finds it; None leaves the call to
    main(), which also says what is wrong with a settings file."""
    configured = _runc_setting(archive)
    if configured is None:
        return None
    from_env = posix.environ.get(RUNC_ENV.encode())
    if from_env:
        return from_env.decode(errors="surrogateescape")
    if configured:
        return configured
    for candidate in RUNC_CANDIDATES:
        if posix.access(candidate, posix.X_OK):
            return candidate
    return None  # main() searches PATH and reports failures


def _runc_setting(archive: str) -> str | None:
    """SMARTER_RUNC from the settings file beside the executable ('' when unset or no file);
    None when the file is unreadable or malformed (runtime_handler.settings' rules)."""
    try:
        fd = posix.open(archive + SETTINGS_SUFFIX, posix.O_RDONLY | posix.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return ""
    except OSError:
        return None
    try:
        # One read: a regular file gives all it has up to the size asked.
        data = posix.read(fd, SETTINGS_MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        posix.close(fd)
    if len(data) > SETTINGS_MAX_BYTES:
        return None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    value = ""
    for raw in text.split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, rest = line.partition("=")
        name = name.strip()
        if not equals or name not in SETTINGS_NAMES:
            return None
        if name == RUNC_ENV:
            value = rest.strip()
    return value


def main() -> None:
    """Exec runc for a call that is plainly runc's; run the runtime's main() for the rest."""
    if sys.argv[:1] == ["-c"]:
        del sys.argv[0]  # started by the shebang's bootstrap: argv[0] is now the archive
    archive, argv = sys.argv[0], sys.argv[1:]
    if is_runcs(argv):
        runc = _runc(archive)
        if runc is not None:
            # No contextlib here (an import); on failure main() says why runc cannot run.
            try:  # noqa: SIM105
                posix.execv(runc, [runc, *argv])
            except OSError:
                pass
    if not archive.startswith("/"):
        # The supervisor changes directory and still imports from the archive.
        archive = f"{posix.getcwd()}/{archive}"
    if archive not in sys.path:
        sys.path.insert(0, archive)
    from runtime_handler.__main__ import main as runtime_main

    sys.exit(runtime_main())


if __name__ == "__main__":
    main()
