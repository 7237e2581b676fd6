"""The remote-core source: each `/sys/class/remoteproc/remoteprocN` is resource
`smarter-devices/rprocN`, exclusive, whose container learns which core it holds from its env."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from device_plugin.dev_source import resolve_link
from device_plugin.rules import RESOURCE_DOMAIN
from device_plugin.sources import DeviceNode, Offer, PathView, handed_path
from smarter_common.hostroot import HostRoot
from smarter_common.logs import get_logger
from smarter_common.remoteproc import (
    ENV_RPROC,
    ENV_RPROC_NAME,
    RemoteCore,
    console_device,
    discover_cores,
)

_log = get_logger("smarter-device-manager", source="remoteproc")


class RemoteprocSource:
    """One exclusive resource per remote core, with the core's console when it has one.

    Never a data channel (a further rpmsg tty, an rpmsg_char endpoint): each has one owner, the
    hybrid runtime, which gives it to the Linux containers of the firmware's pod only.
    """

    name = "remoteproc"

    def __init__(self, host: HostRoot, view: PathView = "host") -> None:
        self.host = host
        self.view = view
        self._unreachable_consoles: set[str] = set()

    def scan(self) -> list[Offer]:
        return [self._offer(core) for core in discover_cores(self.host)]

    def _offer(self, core: RemoteCore) -> Offer:
        envs = {ENV_RPROC: core.device_id, ENV_RPROC_NAME: core.name}
        return Offer(
            resource=f"{RESOURCE_DOMAIN}/{core.resource_suffix}",
            ids=(core.device_id,),
            nodes=self._console(core),
            envs=envs,
        )

    def _console(self, core: RemoteCore) -> tuple[DeviceNode, ...]:
        console = console_device(self.host, core)
        if console is None:
            return ()
        container_path = str(self.host.to_host(console))
        real: Path | None = console
        if self.view == "local":
            # The console may be a link to a pty of this machine (the simulator's are).
            real = Path(os.path.realpath(console))
            if not _is_char_device(real):
                real = None
        elif os.path.islink(console):
            resolved = resolve_link(self.host, console)
            real = None if resolved is None else self.host.dev / resolved
        if real is None:
            if core.device_id not in self._unreachable_consoles:
                _log.warning("console_unusable", core=core.device_id, console=container_path)
                self._unreachable_consoles.add(core.device_id)
            return ()
        host_path = handed_path(self.host, real, self.view)
        return (DeviceNode(container_path=container_path, host_path=host_path),)


def _is_char_device(path: Path) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False
