"""The `/dev` source: the device tree under the host root, matched against the rules."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from device_plugin.rules import DevEntry, EntryKind, Rejection, Rule, match_devices
from device_plugin.sources import DeviceNode, Offer, PathView, handed_path
from smarter_common.errors import HostPathError
from smarter_common.hostroot import HostRoot
from smarter_common.logs import get_logger

# The original recursed ten levels below /dev; nothing real is deeper.
MAX_DEPTH = 10
_MAX_LINK_HOPS = 40
# Memory filesystems mounted below /dev: they hold files, never device nodes, and applications
# churn them (shared memory segments), so they are neither walked nor watched.
NO_DEVICES = ("shm", "mqueue", "hugepages")

_log = get_logger("smarter-device-manager", source="dev")


def scan_dev(host: HostRoot, max_depth: int = MAX_DEPTH) -> list[DevEntry]:
    """Every entry below the host's /dev, symlinks resolved inside the host root.

    Symlinked directories are not descended (they are listed as links): that keeps loops and
    escapes such as `/dev/fd -> /proc/self/fd` out of the walk.
    """
    entries: list[DevEntry] = []
    _walk(host, host.dev, "", max_depth, entries)
    return entries


def _walk(host: HostRoot, directory: Path, prefix: str, depth: int, out: list[DevEntry]) -> None:
    try:
        children = list(os.scandir(directory))
    except OSError:
        return  # vanished or unreadable while walking: the next event rescans
    for child in children:
        path = f"{prefix}{child.name}"
        try:
            mode = child.stat(follow_symlinks=False).st_mode
        except OSError:
            continue
        kind: EntryKind
        if stat.S_ISLNK(mode):
            out.append(DevEntry(path, "link", resolve_link(host, Path(child.path))))
            continue
        if stat.S_ISDIR(mode):
            out.append(DevEntry(path, "dir"))
            if depth > 0 and path not in NO_DEVICES:
                _walk(host, Path(child.path), f"{path}/", depth - 1, out)
            continue
        if stat.S_ISCHR(mode):
            kind = "char"
        elif stat.S_ISBLK(mode):
            kind = "block"
        else:
            kind = "other"
        out.append(DevEntry(path, kind))


def resolve_link(host: HostRoot, link: Path) -> str | None:
    """Where `link` resolves relative to /dev, following links as the host would, or None.

    Absolute targets are the host's paths, so they are resolved under the host root, never in
    this process's own filesystem.
    """
    current = link
    for _ in range(_MAX_LINK_HOPS):
        try:
            target = os.readlink(current)
            host_view = host.to_host(current)
        except (OSError, HostPathError):
            return None
        joined = target if target.startswith("/") else f"{host_view.parent}/{target}"
        resolved = PurePosixPath(os.path.normpath(joined))
        try:
            real = host.path(resolved)
            mode = os.lstat(real).st_mode
        except (OSError, HostPathError):
            return None
        if stat.S_ISLNK(mode):
            current = real
            continue
        try:
            relative = resolved.relative_to("/dev")
        except ValueError:
            return None
        return None if str(relative) == "." else str(relative)
    return None


class DevSource:
    """Resources made of the host's /dev by the current rules."""

    name = "dev"

    def __init__(self, host: HostRoot, rules: list[Rule], view: PathView = "host") -> None:
        self.host = host
        self.rules = rules
        self.view = view
        self._reported: set[Rejection] = set()

    def scan(self) -> list[Offer]:
        rejected: list[Rejection] = []
        resources = match_devices(self.rules, scan_dev(self.host), rejected)
        for rejection in rejected:
            if rejection not in self._reported:
                _log.warning(
                    "device_rejected",
                    rule=rejection.rule,
                    entry=f"/dev/{rejection.entry}",
                    reason=rejection.reason,
                )
        self._reported = set(rejected)
        offers = []
        for resource in resources:
            nodes = tuple(
                DeviceNode(
                    container_path=f"/dev/{node.container_path}",
                    host_path=handed_path(self.host, self.host.dev / node.real_path, self.view),
                )
                for node in resource.nodes
            )
            offers.append(Offer(resource=resource.name, ids=resource.ids, nodes=nodes))
        return offers
