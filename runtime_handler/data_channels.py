"""A pod's data channels: the RPMsg channels of its firmware, given to its Linux containers.

A firmware container's `create` marks its pod: `<root>/smarter-hybrid/.@pods/<sandbox-id>/<id>`
(route.pod_holds_firmware reads it with one stat); its `delete` removes the mark. The `create`
of a Linux container (a sidecar) whose pod is marked comes here before runc: for each live
firmware container of the pod, add each data channel it has announced to the sidecar's
config.json. A sidecar that needs them says how many in its own environment,
`SMARTER_DATA_CHANNELS=<n>`: its create then waits (SMARTER_CHANNEL_TIMEOUT) until each firmware
of the pod runs and has announced n, and is refused naming the core and the channel missing when
that time passes or the firmware has stopped. Without it nothing waits and nothing is refused:
a sidecar of a console-only firmware starts at once.

A channel is bind-mounted from the host's node, not created with mknod from a `linux.devices`
entry: the kernel opens a pty slave only through its devpts inode (a node made elsewhere opens
with EIO), and a simulated core's channels are ptys; a bind mount opens a board's
`/dev/ttyRPMSG<k>` alike. A `linux.resources.devices` rule allows its major:minor, read and write
(no mknod); nothing else is granted and no privilege is asked.

Inside the container: `/dev/smarter/<firmware container name>/tty<n>` for the core's n-th rpmsg
tty channel (tty0 is the console, the firmware container's log, never given), and
`/dev/smarter/<firmware container name>/rpmsg<m>` for its m-th rpmsg_char endpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from runtime_handler import route, settings, state
from runtime_handler.bundle import ANNOTATION_SANDBOX_ID, Bundle
from runtime_handler.errors import ContainerNotFoundError, RuntimeCallError
from smarter_common.atomic import write_atomic
from smarter_common.deadline import DEFAULT_INTERVAL, Deadline
from smarter_common.hostroot import HostRoot
from smarter_common.remoteproc import (
    CHANNEL_TTY,
    STATE_RUNNING,
    Channel,
    CoreChannels,
    RemoteCore,
    core_by_id,
    core_channels,
    read_state,
)

ANNOTATION_CONTAINER_NAME = "io.kubernetes.cri.container-name"
# In a sidecar's environment: how many data channels of each firmware it waits for.
ENV_DATA_CHANNELS = "SMARTER_DATA_CHANNELS"
MAX_DATA_CHANNELS = 64
CONTAINER_DIRECTORY = "/dev/smarter"
# Read and write; no mknod: the node is there already.
DEVICE_ACCESS = "rw"
_MOUNT_OPTIONS = ("bind", "nosuid", "noexec")
_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_HINT = (
    "list the firmware container before its sidecars in the pod spec; a sidecar created while "
    "the firmware restarts is refused and created again by the kubelet"
)


@dataclass(frozen=True)
class Grant:
    """One data channel as a sidecar receives it."""

    container_path: str
    host_path: str
    major: int
    minor: int


@dataclass(frozen=True)
class PodFirmware:
    """A firmware container of the pod, as its record tells."""

    container_id: str
    name: str
    core: str
    status: str
    exit_code: int | None


# -- the pod's marks: written by a firmware container's create and delete ---------------------


def pod_directory(runtime_root: str, sandbox_id: str) -> Path:
    return Path(state.containers_dir(runtime_root)) / route.PODS_DIRECTORY / sandbox_id


def mark_pod(runtime_root: str, record: state.ContainerRecord) -> None:
    """Say that `record`'s pod holds this firmware container (nothing without a pod)."""
    sandbox_id = record.annotations.get(ANNOTATION_SANDBOX_ID, "")
    if not sandbox_id or route.id_problem(sandbox_id):
        return
    directory = pod_directory(runtime_root, sandbox_id)
    directory.mkdir(parents=True, exist_ok=True, mode=0o711)
    (directory / record.id).touch(mode=0o600)


def unmark_pod(runtime_root: str, record: state.ContainerRecord) -> None:
    """Remove the mark of `record`, and its pod's directory once no firmware is left in it."""
    sandbox_id = record.annotations.get(ANNOTATION_SANDBOX_ID, "")
    if not sandbox_id or route.id_problem(sandbox_id):
        return
    directory = pod_directory(runtime_root, sandbox_id)
    (directory / record.id).unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError, OSError):
        directory.rmdir()  # ENOTEMPTY while another firmware container of the pod remains
    with contextlib.suppress(FileNotFoundError, OSError):
        directory.parent.rmdir()


# -- pure decisions ---------------------------------------------------------------------------


def firmware_label(annotations: dict[str, str], core: str) -> str:
    """The directory under /dev/smarter naming a firmware container: its Kubernetes name (a
    DNS label), else its core's name (`remoteproc0`) when it has none usable."""
    name = annotations.get(ANNOTATION_CONTAINER_NAME, "")
    if name and len(name) <= 63 and _NAME_CHARACTERS.issuperset(name) and name[0] != "-":
        return name
    return core


def container_paths(label: str, channels: CoreChannels) -> list[tuple[str, Channel]]:
    """Where each data channel appears in a sidecar: tty<n> by its place among the core's tty
    channels (the console is tty0), rpmsg<m> by its place among its rpmsg_char endpoints."""
    paths = []
    tty_place = 1
    char_place = 0
    for channel in channels.data:
        if channel.kind == CHANNEL_TTY:
            leaf = f"tty{tty_place}"
            tty_place += 1
        else:
            leaf = f"rpmsg{char_place}"
            char_place += 1
        paths.append((f"{CONTAINER_DIRECTORY}/{label}/{leaf}", channel))
    return paths


def with_grants(config: dict[str, object], grants: list[Grant]) -> dict[str, object]:
    """`config` (an OCI config.json) with a bind mount and a device rule per grant; mounts at
    /dev/smarter from an earlier pass are replaced, so a repeated create adds nothing twice."""
    mounts = [
        mount
        for mount in _list(config, "mounts")
        if not (
            isinstance(mount, dict)
            and str(mount.get("destination", "")).startswith(CONTAINER_DIRECTORY + "/")
        )
    ]
    for grant in grants:
        mounts.append(
            {
                "destination": grant.container_path,
                "type": "bind",
                "source": grant.host_path,
                "options": list(_MOUNT_OPTIONS),
            }
        )
    linux = _object(config, "linux")
    resources = _object(linux, "resources")
    rules = _list(resources, "devices")
    for grant in grants:
        rule = {
            "allow": True,
            "type": "c",
            "major": grant.major,
            "minor": grant.minor,
            "access": DEVICE_ACCESS,
        }
        if rule not in rules:
            rules.append(rule)
    resources = {**resources, "devices": rules}
    return {**config, "mounts": mounts, "linux": {**linux, "resources": resources}}


# -- the sidecar's create -----------------------------------------------------------------------


def give_to_sidecar(runtime_root: str, bundle: Bundle) -> list[Grant]:
    """Add the data channels of the pod's firmware to the sidecar's config.json; the grants."""
    wanted = wanted_channels(bundle.env.get(ENV_DATA_CHANNELS, ""))
    sandbox_id = bundle.annotations.get(ANNOTATION_SANDBOX_ID, "")
    firmware = pod_firmware(runtime_root, sandbox_id, refuse_stopped=wanted > 0)
    if not firmware:
        return []
    configured = settings.current()
    host = HostRoot(Path(configured.host_root))
    timeout = configured.channel_timeout if wanted else 0.0
    grants: list[Grant] = []
    for container in firmware:
        grants.extend(_grants_of(host, container, wanted, timeout))
    config_path = Path(bundle.path) / "config.json"
    config = json.loads(config_path.read_text())
    write_atomic(
        config_path, json.dumps(with_grants(config, grants)), mode=0o644, durable=False
    )
    return grants


def wanted_channels(text: str) -> int:
    """The sidecar's SMARTER_DATA_CHANNELS: 0 when unset."""
    if not text.strip():
        return 0
    value = text.strip()
    if not value.isdigit() or not value.isascii() or int(value) > MAX_DATA_CHANNELS:
        raise RuntimeCallError(
            f"{ENV_DATA_CHANNELS}={text!r} in the container's environment must be a whole"
            f" number of data channels from 0 to {MAX_DATA_CHANNELS}"
        )
    return int(value)


def pod_firmware(
    runtime_root: str, sandbox_id: str, *, refuse_stopped: bool = True
) -> list[PodFirmware]:
    """The firmware containers of the pod whose supervisor lives (a restarted one's stopped
    predecessor is left out), by name; a pod whose firmware has all stopped is refused when
    `refuse_stopped`."""
    directory = pod_directory(runtime_root, sandbox_id)
    try:
        ids = sorted(entry.name for entry in directory.iterdir())
    except OSError:
        return []
    found = []
    for container_id in ids:
        try:
            record = state.load(Path(state.container_dir(runtime_root, container_id)))
        except (ContainerNotFoundError, OSError, ValueError, TypeError):
            continue  # deleted meanwhile
        found.append(
            PodFirmware(
                container_id=record.id,
                name=firmware_label(record.annotations, record.core),
                core=record.core,
                status=state.current_status(record),
                exit_code=record.exit_code,
            )
        )
    live = [item for item in found if item.status != state.STATUS_STOPPED]
    if found and not live and refuse_stopped:
        stopped = found[-1]
        raise RuntimeCallError(
            f"the pod's firmware container {stopped.name} on {stopped.core} has stopped"
            f" (exit code {stopped.exit_code}): its data channels are gone",
            hint=_HINT,
        )
    return sorted(live, key=lambda item: item.name)


def _grants_of(
    host: HostRoot, firmware: PodFirmware, wanted: int, timeout: float
) -> list[Grant]:
    core = core_by_id(host, firmware.core)
    if core is None:
        raise RuntimeCallError(
            f"the pod's firmware container {firmware.name} runs on {firmware.core},"
            " which is gone from /sys/class/remoteproc",
            hint=_HINT,
        )
    channels = _wait_for_data_channels(host, core, wanted, timeout)
    if channels is None:
        current = core_channels(host, core)
        console = current.console.device_name if current.console else "none"
        raise RuntimeCallError(
            f"the pod's firmware container {firmware.name} on {firmware.core} announced"
            f" {len(current.data)} of the {wanted} data channels the sidecar waits for"
            f" ({ENV_DATA_CHANNELS}) within {timeout:g} s: tty{len(current.data) + 1} is missing"
            f" (core state {read_state(core) or 'unreadable'}, console {console})",
            hint="check that the firmware announces an rpmsg channel after its console"
            f" (and the kernel has rpmsg_tty or rpmsg_char); raise {settings.CHANNEL_TIMEOUT_ENV}"
            " if it announces late",
        )
    grants = []
    for container_path, channel in container_paths(firmware.name, channels):
        grants.append(_grant(container_path, channel))
    return grants


def _wait_for_data_channels(
    host: HostRoot, core: RemoteCore, wanted: int, timeout: float
) -> CoreChannels | None:
    """The core's channels once it runs and has `wanted` data channels (at once when 0);
    None when `timeout` passes first."""
    if not wanted:
        return core_channels(host, core)
    deadline = Deadline(timeout)
    while True:
        if read_state(core) == STATE_RUNNING:
            channels = core_channels(host, core)
            if len(channels.data) >= wanted:
                return channels
        if deadline.expired():
            return None
        deadline.sleep(DEFAULT_INTERVAL)


def _grant(container_path: str, channel: Channel) -> Grant:
    """The host node behind `channel` (a simulated core's is a link to a pty), and its numbers."""
    real = os.path.realpath(channel.node)
    try:
        info = os.stat(real)
    except OSError as error:
        raise RuntimeCallError(
            f"cannot use data channel {channel.device_name}: {real}: {error.strerror}"
        ) from None
    if not stat.S_ISCHR(info.st_mode):
        raise RuntimeCallError(
            f"data channel {channel.device_name} is not a character device ({real})"
        )
    return Grant(
        container_path=container_path,
        host_path=real,
        major=os.major(info.st_rdev),
        minor=os.minor(info.st_rdev),
    )


def _object(parent: dict[str, object], key: str) -> dict[str, object]:
    value = parent.get(key)
    return dict(value) if isinstance(value, dict) else {}


def _list(parent: dict[str, object], key: str) -> list[object]:
    value = parent.get(key)
    return list(value) if isinstance(value, list) else []
