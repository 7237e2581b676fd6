"""An OCI bundle's `config.json`, read once at `create`, and its entrypoint found in the rootfs.

Stdlib only: every `create` (pod sandboxes included) reads the bundle to decide whether the
container is firmware, and most are not.
"""

from __future__ import annotations

import os

from runtime_handler.errors import RuntimeCallError

# The launcher's own look at a bundle (it decides the create of a plain Linux container before
# this module is imported) is the one implementation: re-exported here for the runtime's use.
from runtime_handler.route import ANNOTATION_CONTAINER_TYPE as ANNOTATION_CONTAINER_TYPE
from runtime_handler.route import ANNOTATION_SANDBOX_ID as ANNOTATION_SANDBOX_ID
from runtime_handler.route import DEFAULT_PATH, scan_json
from runtime_handler.route import ELF_MAGIC as ELF_MAGIC
from runtime_handler.route import FIRMWARE_SUFFIX as FIRMWARE_SUFFIX
from runtime_handler.route import entrypoint_path as _entrypoint_path
from runtime_handler.route import peek_elf as peek_elf
from runtime_handler.route import resolve_in_rootfs as resolve_in_rootfs

ANNOTATION_IMAGE_NAME = "io.kubernetes.cri.image-name"
# Where a required board can be named. Image labels do not reach the bundle; containerd copies
# pod annotations listed in its runtime's `pod_annotations` into config.json.
BOARD_ANNOTATIONS = ("smarter-edge.io/board", "board")
# smarter_common.remoteproc.ENV_RPROC, restated: every create reads the bundle, and that
# module costs imports; tests/test_restated_constants.py.
RPROC_ENV = "SMARTER_RPROC"


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
        return _entrypoint_path(self.rootfs, self.cwd, entry, self.env.get("PATH", DEFAULT_PATH))


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


def parse_json(text: str) -> object:
    """`json.loads(text)`, by CPython's C scanner alone when it takes the document whole
    (`route.scan_json`: no `json`, whose decoder pulls in `re`); else by `json.loads`, which
    parses it the same way or raises the usual error."""
    found, value = scan_json(text)
    if found:
        return value
    import json

    return json.loads(text)


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

