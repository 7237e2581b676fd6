"""A firmware container's record under `<--root>/smarter-hybrid/<id>/`, and its OCI state.

The directory is also the marker that tells later calls (`start`, `kill`, `state`, `delete`)
the container is ours and not runc's. `state.json` is replaced atomically; `control` is the
FIFO on which the supervisor takes `start` and `kill <signal>`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime_handler.errors import ContainerNotFoundError
from smarter_common.atomic import write_atomic
from smarter_common.procfs import process_start_time

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


@dataclass
class ContainerRecord:
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
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def firmware_path(self) -> Path:
        return Path(self.firmware_dir) / self.firmware_name


def save(directory: Path, record: ContainerRecord) -> None:
    write_atomic(directory / RECORD_FILE, json.dumps(asdict(record), indent=1) + "\n")


def load(directory: Path) -> ContainerRecord:
    try:
        raw = json.loads((directory / RECORD_FILE).read_text())
    except FileNotFoundError:
        raise ContainerNotFoundError() from None
    return ContainerRecord(**raw)


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
