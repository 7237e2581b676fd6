"""A firmware container's record under `<--root>/smarter-hybrid/<id>/`, and its OCI state.

The directory is also the marker that tells later calls (`start`, `kill`, `state`, `delete`)
the container is ours and not runc's. `state.json` is replaced atomically; `control` is the
FIFO on which the supervisor takes `start` and `kill <signal>`.
"""

from __future__ import annotations

import os
import time

from runtime_handler.errors import ContainerNotFoundError, ContainerStateError
from smarter_common.atomic import write_atomic
from smarter_common.procfs import process_start_time

# No `typing`, `dataclasses`, `pathlib` or `json` at run time: `kill` reads a record, and
# kill -> stopped (issue 16) pays for every import. dataclasses brings inspect; json.decoder
# compiles regular expressions, and `re` brings enum, functools and collections: ~16 ms of a
# kill that containerd execs (`python3 -I -S`), where nothing has imported them yet.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import TypeVar, dataclass_transform

    RecordClass = TypeVar("RecordClass", bound="type[Record]")
else:

    def dataclass_transform(**_options: object) -> object:
        return lambda decorator: decorator


STATE_SUBDIR = "smarter-hybrid"
RECORD_FILE = "state.json"
CONTROL_FIFO = "control"
OCI_VERSION = "1.0.2"

STATUS_CREATED = "created"
STATUS_RUNNING = "running"
STATUS_STOPPED = "stopped"


def containers_dir(runtime_root: str) -> str:
    """Where our containers' directories are, beside runc's under the same `--root`."""
    return os.path.join(runtime_root, STATE_SUBDIR)


def container_dir(runtime_root: str, container_id: str) -> str:
    return os.path.join(containers_dir(runtime_root), container_id)


def is_ours(runtime_root: str, container_id: str) -> bool:
    """Whether `container_id` is a firmware container (stdlib only, one stat)."""
    return os.path.isdir(container_dir(runtime_root, container_id))


class Record:
    """Base of the classes `record_class` makes: fields compared, shown and saved in order."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _defaults: dict[str, object] = {}  # record_class sets each class's own

    def __init__(self, **values: object) -> None:
        title = f"{type(self).__name__}.__init__()"
        unknown = [name for name in values if name not in self._fields]
        if unknown:
            raise TypeError(f"{title} got an unexpected keyword argument {unknown[0]!r}")
        missing = [
            name for name in self._fields if name not in values and name not in self._defaults
        ]
        if missing:
            listed = ", ".join(repr(name) for name in missing)
            raise TypeError(f"{title} missing required keyword-only arguments: {listed}")
        for name in self._fields:
            if name in values:
                value = values[name]
            else:
                value = self._defaults[name]
                if type(value) is dict:
                    value = dict(value)  # each record its own, as with default_factory=dict
            setattr(self, name, value)

    def as_dict(self) -> dict[str, object]:
        """The fields by name, in order (what `save` writes)."""
        return {name: getattr(self, name) for name in self._fields}

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.as_dict().items())
        return f"{type(self).__name__}({fields})"


@dataclass_transform(kw_only_default=True)
def record_class(cls: RecordClass) -> RecordClass:
    """`cls` (a Record) with its annotated names, in order, as its fields and `__slots__`, and
    its class-level values as their defaults; its keyword-only constructor refuses an unknown or
    missing field with TypeError, as a dataclass's does. The field list is written once, in the
    class body, and mypy checks construction as it would a dataclass's."""
    names = tuple(cls.__annotations__)
    defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
    # Defaults leave the class body (a class attribute would hide the slot of the same name), and
    # so do the descriptors of the instance dict a slotted class has not.
    namespace = {
        key: value
        for key, value in cls.__dict__.items()
        if key not in defaults and key not in ("__dict__", "__weakref__")
    }
    namespace.update(__slots__=names, _fields=names, _defaults=defaults)
    # A new class: __slots__ count only when a class is made.
    return type(cls.__name__, cls.__bases__, namespace)  # type: ignore[return-value]


@record_class
class ContainerRecord(Record):
    """What we remember about one firmware container (its `state.json`)."""

    id: str
    bundle: str
    rootfs: str
    entrypoint: str
    core: str
    firmware_name: str
    firmware_dir: str
    lock_path: str
    host_root: str
    log: str | None
    log_format: str
    oci_version: str = OCI_VERSION
    created: str = ""
    pid: int = 0
    pid_start: str = ""
    status: str = STATUS_CREATED
    exit_code: int | None = None
    error: str | None = None
    firmware_placed: bool = False
    started: str | None = None
    annotations: dict[str, str] = {}  # each record gets its own (Record.__init__)

    @property
    def firmware_path(self) -> Path:
        from pathlib import Path  # not on kill's path

        return Path(self.firmware_dir) / self.firmware_name


def save(directory: str | os.PathLike[str], record: ContainerRecord) -> None:
    import json  # not on kill's path, which only loads

    text = json.dumps(record.as_dict(), indent=1) + "\n"
    write_atomic(os.path.join(directory, RECORD_FILE), text)


def load(directory: str | os.PathLike[str]) -> ContainerRecord:
    """The record saved in `directory`; ContainerStateError when state.json is not one."""
    path = os.path.join(directory, RECORD_FILE)
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except FileNotFoundError:
        raise ContainerNotFoundError() from None
    except UnicodeDecodeError as error:
        raise ContainerStateError(path, f"not UTF-8 text ({error.reason})") from None
    if not text.strip(_JSON_WHITESPACE):
        raise ContainerStateError(path, "the file is empty")
    try:
        raw = parse_json(text)
    except (ValueError, RecursionError) as error:  # json.JSONDecodeError is a ValueError
        raise ContainerStateError(path, f"not JSON: {error}") from None
    problem = record_problem(raw)
    if problem:
        raise ContainerStateError(path, problem)
    return ContainerRecord(**raw)  # type: ignore[arg-type]  # record_problem checked it


# The types a field's annotation names (the class body's annotations are strings).
_TYPE_NAMES: dict[str, type] = {
    "str": str, "int": int, "bool": bool, "None": type(None), "dict[str, str]": dict,
}  # fmt: skip
_FIELD_TYPES = {
    name: tuple(_TYPE_NAMES[part] for part in annotation.split(" | "))
    for name, annotation in ContainerRecord.__annotations__.items()
}
_STATUSES = (STATUS_CREATED, STATUS_RUNNING, STATUS_STOPPED)


def record_problem(raw: object) -> str:
    """What keeps `raw` (parsed state.json) from being a ContainerRecord, or "" when nothing:
    each field present unless it has a default, no other key, each value of its field's type."""
    if not isinstance(raw, dict):
        return f"a JSON {_json_kind(raw)} where an object is expected"
    fields = ContainerRecord._fields
    unknown = [name for name in raw if name not in fields]
    if unknown:
        return "unknown fields " + ", ".join(repr(name) for name in unknown)
    defaults = ContainerRecord._defaults
    missing = [name for name in fields if name not in raw and name not in defaults]
    if missing:
        return "missing fields " + ", ".join(repr(name) for name in missing)
    for name, value in raw.items():
        # type(), not isinstance(): true is no pid, nor 1.0 an exit code.
        if type(value) not in _FIELD_TYPES[name]:
            expected = ContainerRecord.__annotations__[name]
            return f"field {name!r} is a JSON {_json_kind(value)}, not {expected}"
    if any(type(value) is not str for value in raw.get("annotations", {}).values()):
        return "field 'annotations' has a value that is not a string"
    if raw.get("status", STATUS_CREATED) not in _STATUSES:
        return f"field 'status' is {raw['status']!r}, not one of {', '.join(_STATUSES)}"
    return ""


def _json_kind(value: object) -> str:
    """The JSON name of a parsed value's kind, as an operator reading the file sees it."""
    if value is None:
        return "null"
    kinds = {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    return kinds.get(type(value), "object")


class _JsonLoadsSettings:
    """The settings json.loads gives the C scanner (json.decoder.JSONDecoder's defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity: what json's own table maps them to


_JSON_WHITESPACE = " \t\n\r"


def parse_json(text: str) -> object:
    """`json.loads(text)`, by json's own C scanner but without importing json.decoder (see the
    imports). What the scanner does not take whole, from its first character to trailing JSON
    whitespace (malformed text; an interpreter without `_json`), is json.loads's, errors
    included."""
    try:
        from _json import make_scanner

        # make_scanner reads only the settings' attributes (typeshed asks for a scanner).
        scan = make_scanner(_JsonLoadsSettings())  # type: ignore[arg-type]
        value, end = scan(text, 0)
    except (ImportError, AttributeError, TypeError, ValueError, StopIteration, SystemError):
        # SystemError: on malformed text the scanner raises json.decoder's JSONDecodeError,
        # which it looks for only among modules already imported; json.loads's import has it.
        value, end = None, -1
    if end < 0 or text[end:].strip(_JSON_WHITESPACE):
        import json

        return json.loads(text)
    return value


def now_rfc3339() -> str:
    stamp = time.time()
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp))
    return f"{whole}.{int((stamp % 1) * 1e9):09d}Z"


def supervisor_alive(record: ContainerRecord) -> bool:
    """Whether the container's supervisor (its init process) still runs."""
    return record.pid > 0 and process_start_time(record.pid) == record.pid_start


def current_status(record: ContainerRecord) -> str:
    """created/running as recorded while the supervisor lives; stopped once it has exited."""
    if record.status != STATUS_STOPPED and supervisor_alive(record):
        return record.status
    return STATUS_STOPPED


def oci_state(record: ContainerRecord) -> dict[str, object]:
    """The state as `runc state` prints it (OCI runtime spec "State", plus runc's extras)."""
    status = current_status(record)
    return {
        "ociVersion": record.oci_version,
        "id": record.id,
        "pid": record.pid if status != STATUS_STOPPED else 0,
        "status": status,
        "bundle": record.bundle,
        "rootfs": record.rootfs,
        "created": record.created,
        "annotations": record.annotations,
        "owner": "",
    }
