"""An OCI bundle's `config.json`, read once at `create`, and its entrypoint found in the rootfs.

Stdlib only: every `create` (pod sandboxes included) reads the bundle to decide whether the
container is firmware, and most are not.
"""

from __future__ import annotations

import os
import posixpath

from runtime_handler.errors import RuntimeCallError

# Not `from typing import ...` at run time: the create path of every container pays for imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO, Literal

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
        self.rootfs = os.path.normpath(os.path.join(path, root_path))

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
        if "/" in entry:
            found = resolve_in_rootfs(self.rootfs, posixpath.join(self.cwd, entry))
            return found if found and os.path.isfile(found) else None
        for directory in self.env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
            found = resolve_in_rootfs(self.rootfs, posixpath.join("/", directory, entry))
            if found and os.path.isfile(found):
                return found
        return None


def load(bundle_dir: str) -> Bundle:
    """Read `<bundle_dir>/config.json`."""
    path = os.path.abspath(bundle_dir)
    config_path = os.path.join(path, "config.json")
    try:
        with open(config_path, "rb") as stream:
            config = parse_json(stream.read().decode())
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


class _ScanContext:
    """The settings `_json.make_scanner` reads: those of a plain `json.loads`."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


def parse_json(text: str) -> object:
    """`json.loads(text)` without importing `json`, whose decoder pulls in `re` (~5 ms).

    CPython's C scanner (`_json`) parses the document; anything it does not accept whole is
    given to `json.loads`, which parses it the same way or raises the usual error.
    """
    document = text.strip()
    try:
        from _json import make_scanner

        scan = make_scanner(_ScanContext())  # type: ignore[arg-type]
        value, end = scan(document, 0)
    except (ImportError, StopIteration, ValueError, SystemError):
        # SystemError: the C scanner fails so on some malformed input (a trailing comma)
        # when driven directly; json.loads then says what is wrong.
        pass
    else:
        if end == len(document):
            return value
    import json

    return json.loads(text)


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
        candidate = os.path.join(rootfs, *resolved, part)
        try:
            target = os.readlink(candidate)
        except FileNotFoundError:
            return None
        except OSError:
            # Not a link (EINVAL) or not a directory on the way (ENOTDIR).
            if not os.path.lexists(candidate):
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
    return os.path.join(rootfs, *resolved)


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
            order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
            if int.from_bytes(head[18:20], order) != _EM_ARM:
                return True, False
            if int.from_bytes(head[16:18], order) == _ET_DYN:
                return True, False
            return True, not _has_interpreter(stream, head, order)
    except OSError:
        return False, False


def _has_interpreter(stream: BinaryIO, head: bytes, order: Literal["little", "big"]) -> bool:
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

