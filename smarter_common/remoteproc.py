"""The remote-core contract, reading side: the cores under `/sys/class/remoteproc` and their names.

The kernel's ABI (Documentation/ABI/testing/sysfs-class-remoteproc): `name`, `firmware` (file
name looked up by the firmware loader), `state` (`offline`, `running`, `crashed`, `suspended`,
`invalid`, `attached`, `detached`, `deleted`); writing `start` or `stop` to `state` drives the
core; `recovery` (`enabled`, `disabled`; writing `recover` restarts a crashed core once).
The device manager, the hybrid runtime, the simulator (the kernel's side) and the test bed all
name these through this module; writing them, with the kernel's errno meanings, is
`smarter_common.remoteproc_control`.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from smarter_common.errors import HostPathError
from smarter_common.hostroot import HostRoot

# The attributes of `remoteprocN`.
ATTR_NAME = "name"
ATTR_FIRMWARE = "firmware"
ATTR_STATE = "state"
ATTR_RECOVERY = "recovery"

# What `state` reads.
STATE_OFFLINE = "offline"
STATE_RUNNING = "running"
STATE_CRASHED = "crashed"
STATE_ATTACHED = "attached"
# States in which a core runs the firmware it was given.
LIVE_STATES = (STATE_RUNNING, STATE_ATTACHED)
# States in which a core takes new firmware (a crashed one after recovery and stop).
IDLE_STATES = (STATE_OFFLINE, STATE_CRASHED)

# What `state` takes.
COMMAND_START = "start"
COMMAND_STOP = "stop"

# What `recovery` reads and takes.
RECOVERY_ENABLED = "enabled"
RECOVERY_DISABLED = "disabled"
RECOVERY_RECOVER = "recover"

# What the device manager's Allocate puts in a container's environment: the core's sysfs name
# (`remoteproc0`) and its `name` attribute (`cortex-m4`). runtime_handler/bundle.py restates
# ENV_RPROC on purpose: it is on the runtime's exec'd path, which imports nothing of this.
ENV_RPROC = "SMARTER_RPROC"
ENV_RPROC_NAME = "SMARTER_RPROC_NAME"

# RPMsg channels: `rpmsg_tty` makes `/dev/ttyRPMSG<k>` (class `tty`), `rpmsg_char` makes
# `/dev/rpmsg<k>` (class `rpmsg`), k counting announcements across every core.
CHANNEL_TTY = "tty"
CHANNEL_CHAR = "char"
TTY_CHANNEL_PREFIX = "ttyRPMSG"
CHAR_CHANNEL_PREFIX = "rpmsg"

_CORE_DIR = re.compile(r"^remoteproc(\d+)$")
# Cortex-M/R cores as they appear in names and devicetree `compatible` strings:
# "cortex-m4", "arm,cortex-m33", "fsl,imx8mq-cm4", "st,stm32mp1-m4", "ti,am64-r5f".
_CPU_IN_TEXT = re.compile(
    r"(?:cortex-|(?<=[-_,])c?)(m0plus|m0|m1|m3|m4|m7|m23|m33|m35p|m55|m85|r4|r5|r7|r8|r52|r82)f?\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RemoteCore:
    """One remote processor, e.g. `remoteproc0`."""

    index: int
    sysfs: Path

    @property
    def device_id(self) -> str:
        """The sysfs name, `remoteprocN`: what containers receive as `SMARTER_RPROC`."""
        return f"remoteproc{self.index}"

    @property
    def resource_suffix(self) -> str:
        """The short name used in resource names: `rprocN`."""
        return f"rproc{self.index}"

    @property
    def name(self) -> str:
        return _read_text(self.sysfs / ATTR_NAME)

    @property
    def compatible(self) -> list[str]:
        """The devicetree `compatible` strings of the core's node, if it has one."""
        return list(
            devicetree_strings(_read_bytes(self.sysfs / "device" / "of_node" / "compatible"))
        )

    def state(self) -> str:
        return _read_text(self.sysfs / ATTR_STATE)

    def firmware(self) -> str:
        return _read_text(self.sysfs / ATTR_FIRMWARE)

    def has_recovery(self) -> bool:
        """Whether the kernel offers `recovery` for this core (from Linux 5.11)."""
        return (self.sysfs / ATTR_RECOVERY).exists()

    def exists(self) -> bool:
        """Whether the core is still there (a driver unbind removes its directory)."""
        return self.sysfs.is_dir()

    @property
    def cpu(self) -> str | None:
        """The core's CPU as `cortex-m4`, `cortex-r5`..., when its name or node tells."""
        return cpu_from_descriptions([self.name, *self.compatible])


@dataclass(frozen=True)
class CoreSnapshot:
    """What one core says at one moment: enough to tell who uses it and how it is doing."""

    device_id: str
    name: str
    state: str
    firmware: str


@dataclass(frozen=True)
class Board:
    """The board as its devicetree names it (`/sys/firmware/devicetree/base`)."""

    model: str
    compatible: tuple[str, ...]


def read_state(core: RemoteCore) -> str:
    """The core's state; '' when it cannot be read (gone, unbound, a dead mount): callers that
    poll treat that as "not the state I wait for" and say so with the state they found."""
    try:
        return (core.sysfs / ATTR_STATE).read_text().strip()
    except OSError:
        return ""


def read_recovery(core: RemoteCore) -> str:
    """The core's `recovery` value; '' when it has none or it cannot be read."""
    try:
        return (core.sysfs / ATTR_RECOVERY).read_text().strip()
    except OSError:
        return ""


def snapshot_cores(host: HostRoot) -> list[CoreSnapshot]:
    """State and firmware of every core under the host root, in index order. An attribute that
    cannot be read reads `unreadable: <why>`, so that a report shows it instead of failing."""
    return [
        CoreSnapshot(
            device_id=core.device_id,
            name=_read_or_say(core.sysfs / ATTR_NAME),
            state=_read_or_say(core.sysfs / ATTR_STATE),
            firmware=_read_or_say(core.sysfs / ATTR_FIRMWARE),
        )
        for core in discover_cores(host)
    ]


def devicetree_strings(raw: bytes) -> tuple[str, ...]:
    """A devicetree string-list property (`compatible`) as the kernel exposes it:
    NUL-terminated strings, decoded; empty items are dropped."""
    return tuple(item.decode(errors="replace") for item in raw.split(b"\0") if item)


def encode_devicetree_strings(values: tuple[str, ...] | list[str]) -> bytes:
    """The inverse of `devicetree_strings`: each string NUL-terminated."""
    return b"".join(value.encode() + b"\0" for value in values)


def read_board(host: HostRoot) -> Board:
    """The devicetree's `model` and `compatible` strings; empty where the host has none."""
    base = host.devicetree_base
    model = _read_bytes_or_empty(base / "model").rstrip(b"\0").decode(errors="replace")
    return Board(
        model=model, compatible=devicetree_strings(_read_bytes_or_empty(base / "compatible"))
    )


def firmware_search_path(host: HostRoot) -> str:
    """The `firmware_class.path` kernel parameter: a host directory the firmware loader
    searches before the standard ones; '' when unset or unreadable."""
    try:
        return host.firmware_search_path_param.read_text().strip()
    except OSError:
        return ""


def firmware_dir(host: HostRoot) -> Path:
    """Where firmware is put for the loader to find first: the `firmware_class.path`
    directory, else /lib/firmware (both under the host root). HostPathError when the
    parameter names a path that cannot be under the host root."""
    custom = firmware_search_path(host)
    if not custom:
        return host.lib_firmware
    try:
        return host.path(custom)
    except HostPathError as error:
        raise HostPathError(
            f"the kernel's firmware search path {custom!r} is unusable ({error.message})",
            hint="set /sys/module/firmware_class/parameters/path to an absolute directory",
        ) from None


def firmware_search_dirs(host: HostRoot) -> list[Path]:
    """Where the firmware loader looks for a file named in `firmware`, in the kernel's order
    (drivers/base/firmware_loader/main.c, leaving out the per-release directories): the
    `firmware_class.path` directory, /lib/firmware/updates, /lib/firmware. An unusable
    parameter is skipped, as the loader finds nothing there."""
    dirs = []
    with contextlib.suppress(HostPathError):
        custom = firmware_search_path(host)
        if custom:
            dirs.append(host.path(custom))
    return [*dirs, host.path("/lib/firmware/updates"), host.lib_firmware]


def cpu_from_descriptions(descriptions: list[str]) -> str | None:
    """The first Cortex-M/R CPU named in `descriptions`, as `cortex-<profile><n>`."""
    for text in descriptions:
        match = _CPU_IN_TEXT.search(text)
        if match:
            return f"cortex-{match.group(1).lower()}"
    return None


def discover_cores(host: HostRoot) -> list[RemoteCore]:
    """Every remote core under the host root, in index order; none if remoteproc is absent."""
    try:
        entries = list(host.remoteproc_class.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    cores = []
    for entry in entries:
        match = _CORE_DIR.match(entry.name)
        if match:
            cores.append(RemoteCore(index=int(match.group(1)), sysfs=entry))
    return sorted(cores, key=lambda core: core.index)


def core_by_id(host: HostRoot, device_id: str) -> RemoteCore | None:
    """The core called `remoteprocN`, or None if there is no such core."""
    match = _CORE_DIR.match(device_id)
    if not match:
        return None
    sysfs = host.remoteproc_class / device_id
    if not sysfs.is_dir():
        return None
    return RemoteCore(index=int(match.group(1)), sysfs=sysfs)


def console_device(host: HostRoot, core: RemoteCore) -> Path | None:
    """The core's RPMsg console: the first tty channel sysfs places under the core, else
    `/dev/ttyRPMSG<N>` when sysfs says nothing of that tty.

    The kernel numbers `ttyRPMSG*` in the order firmware announces its rpmsg channels, not by
    core, so sysfs is asked first; the index name is the guess for hosts without that sysfs,
    and never taken when sysfs places that tty under another core (it is then that core's
    console or data channel, not this core's).
    """
    found = announced_console(host, core)
    if found is not None:
        return found
    candidate = host.dev / f"{TTY_CHANNEL_PREFIX}{core.index}"
    if not candidate.exists() or _sysfs_places_elsewhere(host, candidate.name, core):
        return None
    return candidate


def announced_console(host: HostRoot, core: RemoteCore) -> Path | None:
    """The `/dev/ttyRPMSG*` whose sysfs `device` lies under this core's device, if any yet.

    On a board, `/sys/class/tty/ttyRPMSGk/device` resolves into
    `.../remoteprocN/.../virtioM.rpmsg-tty.-1.1024` once the firmware has announced its channel.
    """
    console = core_channels(host, core).console
    return console.node if console is not None else None


@dataclass(frozen=True)
class Channel:
    """One RPMsg channel a core's firmware announced, as Linux exposes it.

    `kind` is CHANNEL_TTY (`rpmsg_tty`: `/dev/ttyRPMSG<number>`) or CHANNEL_CHAR (`rpmsg_char`:
    `/dev/rpmsg<number>`); `endpoint` is the rpmsg device's sysfs name
    (`virtio0.rpmsg-tty.-1.1025`), which says the channel's name and addresses.
    """

    kind: str
    number: int
    node: Path
    endpoint: str

    @property
    def device_name(self) -> str:
        """The node's name under /dev: `ttyRPMSG3`, `rpmsg0`."""
        return self.node.name


@dataclass(frozen=True)
class CoreChannels:
    """A core's channels: the first tty channel is its console (the firmware container's log,
    the runtime's); every further tty channel and every rpmsg_char endpoint is a data channel."""

    console: Channel | None
    data: tuple[Channel, ...]


def core_channels(host: HostRoot, core: RemoteCore) -> CoreChannels:
    """The channels sysfs places under `core` whose device node exists, in the firmware's
    order: by endpoint address, then by the number the kernel gave the node."""
    ttys = _channels_under(host, core, tty_class(host), TTY_CHANNEL_PREFIX, CHANNEL_TTY)
    chars = _channels_under(host, core, rpmsg_class(host), CHAR_CHANNEL_PREFIX, CHANNEL_CHAR)
    console = ttys[0] if ttys else None
    return CoreChannels(console=console, data=(*ttys[1:], *chars))


def tty_class(host: HostRoot) -> Path:
    """`/sys/class/tty` under the host root (a real sysfs, or the simulator's)."""
    return host.sys / "class" / "tty"


def rpmsg_class(host: HostRoot) -> Path:
    """`/sys/class/rpmsg` under the host root: rpmsg_char's endpoint devices (and its
    `rpmsg_ctrl<k>` control devices, which are no channel)."""
    return host.sys / "class" / "rpmsg"


def _channels_under(
    host: HostRoot, core: RemoteCore, class_dir: Path, prefix: str, kind: str
) -> list[Channel]:
    try:
        entries = list(class_dir.iterdir())
    except OSError:
        return []
    core_path = os.path.realpath(core.sysfs)
    found = []
    for entry in entries:
        number = _channel_number(entry.name, prefix)
        if number is None:
            continue
        device = _device_under(entry, core_path)
        node = host.dev / entry.name
        if device is not None and node.exists():
            found.append(Channel(kind=kind, number=number, node=node, endpoint=device))
    return sorted(found, key=lambda channel: (_endpoint_address(channel.endpoint), channel.number))


def _endpoint_address(endpoint: str) -> int:
    """The firmware's endpoint address, last in an rpmsg device's name
    (`virtio0.rpmsg-tty.-1.1025`): a firmware creates its console's endpoint first, so the
    lowest address is the console even when the kernel reused a lower tty number for a later
    channel. Names that carry none sort after those that do."""
    last = endpoint.rpartition(".")[2]
    return int(last) if last.isdigit() and last.isascii() else 1 << 32


def _channel_number(name: str, prefix: str) -> int | None:
    """k of `<prefix><k>`; None for other names (`rpmsg_ctrl0`, `ttyRPMSGx`)."""
    digits = name[len(prefix) :]
    if not name.startswith(prefix) or not digits.isdigit() or not digits.isascii():
        return None
    return int(digits)


def _device_under(entry: Path, core_path: str) -> str | None:
    """The name of the rpmsg device behind a class entry when it lies under the core's sysfs
    directory (its `device` link on a board and in the simulator; the entry itself in sysfs's
    /sys/devices tree), else None."""
    for candidate in (entry / "device", entry):
        resolved = os.path.realpath(candidate)
        if resolved.startswith(core_path + os.sep):
            return os.path.basename(os.path.realpath(entry / "device"))
    return None


def _sysfs_places_elsewhere(host: HostRoot, tty: str, core: RemoteCore) -> bool:
    """Whether sysfs says where `tty` comes from, and it is not `core`."""
    device = tty_class(host) / tty / "device"
    if not os.path.lexists(device):
        return False
    return _device_under(tty_class(host) / tty, os.path.realpath(core.sysfs)) is None


def _read_text(path: Path) -> str:
    """The attribute's text; '' when it does not exist. Other errors (EACCES, EIO, a dead
    mount's ENOTCONN) are raised as OSError naming the file, for the caller to report."""
    try:
        return path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return ""


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _read_bytes_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _read_or_say(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as error:
        return f"unreadable: {error}"
