"""The `/dev` source: the device tree under the host root, matched against the rules."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from device_plugin.rules import DevEntry, EntryKind, Rejection, Rule, match_devices
from device_plugin.sources import DeviceNode, Offer, PathView, handed_path
from smarter_common.errors import HostPathError
from smarter_common.hostroot import HostRoot
from smarter_common.logs import get_logger

# The original recursed ten levels below /dev; nothing real is deeper.
MAX_DEPTH = 10
_MAX_LINK_HOPS = 40
# Pseudo filesystems mounted below /dev that applications churn: a pty per terminal or exec
# session (`pts`), shared memory segments and message queues. They are neither walked nor heard
# (every `kubectl exec` would be a rescan) unless a rule names them (see `quiet_dirs`).
PSEUDO_DIRS = ("pts", "shm", "mqueue", "hugepages")

_log = get_logger("smarter-device-manager", source="dev")


def quiet_dirs(rules: Iterable[Rule]) -> frozenset[str]:
    """The PSEUDO_DIRS no rule names: a rule names `pts` if it matches `pts` itself or its
    pattern spells `pts/` literally (`^pts/[0-9]+$`)."""
    rules = list(rules)
    return frozenset(
        name
        for name in PSEUDO_DIRS
        if not any(rule.pattern.search(name) or f"{name}/" in rule.devicematch for rule in rules)
    )


def scan_dev(
    host: HostRoot, max_depth: int = MAX_DEPTH, skip: Iterable[str] = PSEUDO_DIRS
) -> list[DevEntry]:
    """Every entry below the host's /dev, symlinks resolved inside the host root.

    Symlinked directories are not descended (they are listed as links): that keeps loops and
    escapes such as `/dev/fd -> /proc/self/fd` out of the walk. Nor are the directories in
    `skip` (paths relative to /dev), which are listed as empty.
    """
    entries: list[DevEntry] = []
    _walk(host, host.dev, "", max_depth, frozenset(skip), entries)
    return entries


def _walk(
    host: HostRoot,
    directory: Path,
    prefix: str,
    depth: int,
    skip: frozenset[str],
    out: list[DevEntry],
) -> None:
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
            if depth > 0 and path not in skip:
                _walk(host, Path(child.path), f"{path}/", depth - 1, skip, out)
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
    # The PSEUDO_DIRS the current rules leave alone: not walked, and not heard by the watcher.
    quiet: frozenset[str]
    _rules: list[Rule]

    def __init__(self, host: HostRoot, rules: list[Rule], view: PathView = "host") -> None:
        self.host = host
        self.view = view
        self._reported: set[Rejection] = set()
        # The /dev path each resource was made of, kept after the device is unplugged: a rules
        # reload must know whether the new rules still want a device that is not there now.
        self._entries: dict[str, str] = {}
        self.rules = rules

    @property
    def rules(self) -> list[Rule]:
        return self._rules

    @rules.setter
    def rules(self, rules: list[Rule]) -> None:
        # One assignment each, so the watcher's thread reads either the old or the new value.
        self._rules = rules
        self.quiet = quiet_dirs(rules)

    def wants(self, resource: str) -> bool:
        """Whether the current rules match the path `resource` was made of (present or not)."""
        entry = self._entries.get(resource)
        return entry is not None and any(rule.pattern.search(entry) for rule in self._rules)

    def scan(self) -> list[Offer]:
        rejected: list[Rejection] = []
        resources = match_devices(self._rules, scan_dev(self.host, skip=self.quiet), rejected)
        for rejection in rejected:
            if rejection not in self._reported:
                _log.warning(
                    "device_rejected",
                    rule=rejection.rule,
                    devicematch=rejection.devicematch,
                    entry=f"/dev/{rejection.entry}",
                    reason=rejection.reason,
                )
        self._reported = set(rejected)
        offers = []
        for resource in resources:
            self._entries[resource.name] = resource.entry
            nodes = tuple(
                DeviceNode(
                    container_path=f"/dev/{node.container_path}",
                    host_path=handed_path(self.host, self.host.dev / node.real_path, self.view),
                )
                for node in resource.nodes
            )
            offers.append(Offer(resource=resource.name, ids=resource.ids, nodes=nodes))
        return offers
