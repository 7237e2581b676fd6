"""The remoteproc model: the remote cores under `/sys/class/remoteproc` and their state.

The kernel's ABI (Documentation/ABI/testing/sysfs-class-remoteproc): `name`, `firmware` (file
name looked up by the firmware loader), `state` (`offline`, `running`, `crashed`, `suspended`,
`invalid`, `attached`); writing `start` or `stop` to `state` drives the core.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from smarter_common.hostroot import HostRoot

_CORE_DIR = re.compile(r"^remoteproc(\d+)$")
# Cortex-M/R cores as they appear in names and devicetree `compatible` strings:
# "cortex-m4", "arm,cortex-m33", "fsl,imx8mq-cm4", "st,stm32mp1-m4", "ti,am64-r5f".
_CPU_IN_TEXT = re.compile(
    r"(?:cortex-|(?<=[-_,])c?)(m0plus|m0|m1|m3|m4|m7|m23|m33|m35p|m55|m85|r4|r5|r7|r8|r52|r82)f?\b",
    re.IGNORECASE,
)

STATE_OFFLINE = "offline"
STATE_RUNNING = "running"
STATE_CRASHED = "crashed"


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
        return _read_text(self.sysfs / "name")

    @property
    def compatible(self) -> list[str]:
        """The devicetree `compatible` strings of the core's node, if it has one."""
        raw = _read_bytes(self.sysfs / "device" / "of_node" / "compatible")
        return [item.decode(errors="replace") for item in raw.split(b"\0") if item]

    def state(self) -> str:
        return _read_text(self.sysfs / "state")

    def firmware(self) -> str:
        return _read_text(self.sysfs / "firmware")

    @property
    def cpu(self) -> str | None:
        """The core's CPU as `cortex-m4`, `cortex-r5`..., when its name or node tells."""
        return cpu_from_descriptions([self.name, *self.compatible])


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
    """The core's RPMsg console: the tty sysfs places under the core, else `/dev/ttyRPMSG<N>`.

    The kernel numbers `ttyRPMSG*` in the order firmware announces its rpmsg channels, not by
    core, so sysfs is asked first; the index name is the guess for hosts without that sysfs.
    """
    found = announced_console(host, core)
    if found is not None:
        return found
    candidate = host.dev / f"ttyRPMSG{core.index}"
    return candidate if candidate.exists() else None


def announced_console(host: HostRoot, core: RemoteCore) -> Path | None:
    """The `/dev/ttyRPMSG*` whose sysfs `device` lies under this core's device, if any yet.

    On a board, `/sys/class/tty/ttyRPMSGk/device` resolves into
    `.../remoteprocN/.../virtioM.rpmsg-tty.-1.1024` once the firmware has announced its channel.
    """
    try:
        entries = sorted(tty_class(host).glob("ttyRPMSG*"))
    except OSError:
        return None
    core_path = os.path.realpath(core.sysfs)
    for entry in entries:
        device = os.path.realpath(entry / "device")
        if device.startswith(core_path + os.sep):
            node = host.dev / entry.name
            if node.exists():
                return node
    return None


def tty_class(host: HostRoot) -> Path:
    """`/sys/class/tty` under the host root (a real sysfs, or the simulator's)."""
    return host.sys / "class" / "tty"


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
