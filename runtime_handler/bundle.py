"""An OCI bundle's `config.json`, read once at `create`, and its entrypoint found in the rootfs.

Every `create` (pod sandboxes included) reads the bundle to decide whether the container is
firmware, and most are not: the launcher (runtime_handler.route) imports this module alone from
the archive and asks `create_is_runcs`, so at import it loads nothing but `posix` (no `os`, no
`json`, no error classes: those are imported where a refusal needs them).
"""

from __future__ import annotations

import posix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO, Literal

    from runtime_handler.errors import RuntimeCallError

    ByteOrder = Literal["little", "big"]

ANNOTATION_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
ANNOTATION_IMAGE_NAME = "io.kubernetes.cri.image-name"
ANNOTATION_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
# Where a required board can be named. Image labels do not reach the bundle; containerd copies
# pod annotations listed in its runtime's `pod_annotations` into config.json.
BOARD_ANNOTATIONS = ("smarter-edge.io/board", "board")
FIRMWARE_SUFFIX = ".elf"
# smarter_common.remoteproc.ENV_RPROC and smarter_common.firmware_elf.ELF_MAGIC, restated: every
# create reads the bundle, and those modules cost imports; tests/test_restated_constants.py.
RPROC_ENV = "SMARTER_RPROC"
ELF_MAGIC = b"\x7fELF"
_ELFCLASS32 = 1
_EM_ARM = 40
_ET_DYN = 3
_PT_INTERP = 3
_ELF32_HEADER = 52
_MAX_PROGRAM_HEADERS = 256
_MAX_SYMLINKS = 40
_READ_CHUNK = 65536
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# runtime_handler.route's (restated: this module must not import the launcher's).
_STATE_DIRECTORY = "smarter-hybrid"
_PODS_DIRECTORY = ".@pods"
_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_S_IFREG = 0o100000


class Bundle:
    """What the runtime needs from a bundle: the process, its environment, annotations, rootfs."""

    __slots__ = ("annotations", "args", "cwd", "env", "oci_version", "path", "rootfs", "terminal")

    def __init__(self, path: str, config: dict[str, object]) -> None:
        # Fields of the wrong JSON type are refused as runc refuses them (Go's json.Unmarshal
        # into specs.Spec), never read as something else or skipped.
        self.path = path
        process = _object(config, "process", "Spec.process", "specs.Process")
        root = _object(config, "root", "Spec.root", "specs.Root")
        self.oci_version = _string(config, "ociVersion", "Spec.ociVersion") or "1.0.2"
        self.args: list[str] = _strings(process, "args", "Process.process.args")
        self.cwd = _string(process, "cwd", "Process.process.cwd") or "/"
        terminal = process.get("terminal")
        if terminal is not None and not isinstance(terminal, bool):
            raise _unmarshal(terminal, "Process.process.terminal", "bool")
        self.terminal = bool(terminal)
        self.env: dict[str, str] = {}
        for item in _strings(process, "env", "Process.process.env"):
            name, _, value = item.partition("=")
            self.env[name] = value
        annotations = _object(config, "annotations", "Spec.annotations", "map[string]string")
        self.annotations: dict[str, str] = {}
        for key, annotation in annotations.items():
            if not isinstance(annotation, str):
                raise _unmarshal(annotation, "Spec.annotations", "string")
            self.annotations[key] = annotation
        root_path = _string(root, "path", "Root.root.path") or "rootfs"
        self.rootfs = normpath(_join(path, root_path))

    @property
    def board(self) -> str | None:
        """The board the container asks for, if any."""
        for key in BOARD_ANNOTATIONS:
            value = self.annotations.get(key, "").strip()
            if value:
                return value
        return None

    @property
    def requested_core(self) -> str | None:
        """The core the device manager gave the container (`SMARTER_RPROC`), if any."""
        return self.env.get(RPROC_ENV) or None

    @property
    def entrypoint(self) -> str | None:
        return self.args[0] if self.args else None

    @property
    def is_sandbox(self) -> bool:
        """Whether this is a pod's sandbox (its pause process): always runc's, never firmware."""
        return self.annotations.get(ANNOTATION_CONTAINER_TYPE) == "sandbox"

    @property
    def pod_sandbox_id(self) -> str | None:
        """The sandbox id of the pod this container belongs to; None for a sandbox itself and
        for a container no CRI created (podman's, runc's own)."""
        if self.annotations.get(ANNOTATION_CONTAINER_TYPE) != "container":
            return None
        return self.annotations.get(ANNOTATION_SANDBOX_ID) or None

    @property
    def declares_firmware(self) -> bool:
        """Whether the container says it is firmware even before its entrypoint is checked.

        Firmware images name their ELF `/firmware.elf`. Such a container is refused with a
        reason when its entrypoint is not runnable firmware, rather than handed to runc. A
        board annotation does not declare firmware: containerd copies a pod's annotations to
        every container of the pod, its sandbox and sidecars included.
        """
        entry = self.entrypoint or ""
        return entry.endswith(FIRMWARE_SUFFIX)

    def entrypoint_path(self) -> str | None:
        """The host path of the entrypoint inside the rootfs, None when it does not exist."""
        entry = self.entrypoint
        if not entry:
            return None
        return entrypoint_path(self.rootfs, self.cwd, entry, self.env.get("PATH", DEFAULT_PATH))


def load(bundle_dir: str) -> Bundle:
    """Read `<bundle_dir>/config.json`."""
    from runtime_handler.errors import RuntimeCallError

    path = _absolute(bundle_dir)
    config_path = _join(path, "config.json")
    try:
        config = parse_json(_read_file(config_path).decode())
    except OSError as error:
        raise RuntimeCallError(
            f"cannot read bundle config {config_path}: {error.strerror}"
        ) from None
    except ValueError as error:
        raise RuntimeCallError(f"bundle config {config_path} is not valid JSON: {error}") from None
    except RecursionError:
        # Go's decoder refuses nesting beyond 10000; Python's parser gives up sooner.
        raise RuntimeCallError(f"bundle config {config_path} is nested too deeply") from None
    if not isinstance(config, dict):
        raise RuntimeCallError(f"bundle config {config_path} is not a JSON object")
    return Bundle(path, config)


def parse_json(text: str) -> object:
    """`json.loads(text)`, by CPython's C scanner alone when it takes the document whole
    (`scan_json`: no `json`, whose decoder pulls in `re`); else by `json.loads`, which parses
    it the same way or raises the usual error."""
    found, value = scan_json(text)
    if found:
        return value
    import json

    return json.loads(text)


def create_is_runcs(
    state_root: str, bundle_dir: str, pod_holds_firmware: Callable[[str, str], bool]
) -> bool:
    """Whether `create` of the container in `bundle_dir` is plainly runc's, decided as
    runtime_handler.__main__.main() decides it (the launcher asks, for a valid container id).

    True for a sandbox, and for a container whose entrypoint is missing or no fixed-address
    32-bit ARM executable, unless it declares itself firmware (an entrypoint ending in `.elf`)
    or its pod holds firmware (`pod_holds_firmware(state_root, sandbox_id)`: main() gives it
    the pod's data channels). A config.json that cannot be read is runc's to report. Whatever
    needs more than a look (a document the C scanner does not take whole, a field of an
    unexpected type) is left to main().
    """
    bundle = _absolute(bundle_dir)
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


def _has_interpreter(stream: BinaryIO, head: bytes, order: ByteOrder) -> bool:
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


def _absolute(path: str) -> str:
    return normpath(path if path.startswith("/") else f"{posix.getcwd()}/{path}")


def _object(parent: dict[str, object], key: str, field: str, go_type: str) -> dict[str, object]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _unmarshal(value, field, go_type)
    return value


def _string(parent: dict[str, object], key: str, field: str) -> str:
    value = parent.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _unmarshal(value, field, "string")
    return value


def _strings(parent: dict[str, object], key: str, field: str) -> list[str]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _unmarshal(value, field, "[]string")
    for item in value:
        if not isinstance(item, str):
            raise _unmarshal(item, field, "string")
    return value


def _unmarshal(value: object, field: str, go_type: str) -> RuntimeCallError:
    """Go's json error for `value` where `field` of `go_type` was expected."""
    from runtime_handler.errors import RuntimeCallError

    if isinstance(value, bool):
        kind = "bool"
    elif isinstance(value, int | float):
        kind = "number"
    elif isinstance(value, str):
        kind = "string"
    elif isinstance(value, list):
        kind = "array"
    else:
        kind = "object"
    return RuntimeCallError(
        f"json: cannot unmarshal {kind} into Go struct field {field} of type {go_type}"
    )
