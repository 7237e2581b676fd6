"""Pod names in DNS: one hosts file per container, in the directory dnsmasq serves.

A record is `<hostsDir>/<container id>`, replaced atomically so dnsmasq (which follows the
directory by inotify) never reads half a file:

    # smarter-cni container=<id> ifname=<ifname>
    <ip> <pod> <pod>.<namespace> [<app>]

The application name is added only if no other record on the node claims it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from cni.names import app_name, is_dns_label
from smarter_common.atomic import remove_durably, write_atomic
from smarter_common.locks import FileLock

_HEADER = "# smarter-cni"


@dataclass(frozen=True)
class Record:
    container_id: str
    ifname: str
    address: ipaddress.IPv4Address
    names: tuple[str, ...]


def names_for(pod: str, namespace: str, claimed: Collection[str]) -> list[str]:
    """The names a pod gets: pod, pod.namespace, and its app name when nobody else has it.

    Only RFC 1123 labels are used; a pod whose name or namespace is not one gets no name.
    """
    if not (is_dns_label(pod) and is_dns_label(namespace)):
        return []
    names = [pod, f"{pod}.{namespace}"]
    app = app_name(pod)
    if app is not None and app not in claimed:
        names.append(app)
    return names


def render(record: Record) -> str:
    return (
        f"{_HEADER} container={record.container_id} ifname={record.ifname}\n"
        f"{record.address} {' '.join(record.names)}\n"
    )


def parse(container_id: str, text: str) -> Record | None:
    """The record in a hosts file's `text`, or None if it is not one of ours."""
    lines = text.splitlines()
    if len(lines) < 2 or not lines[0].startswith(_HEADER):
        return None
    fields = dict(part.partition("=")[::2] for part in lines[0].split()[2:])
    address, *names = lines[1].split()
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return None
    return Record(fields.get("container", container_id), fields.get("ifname", ""), ip, tuple(names))


class HostsDirectory:
    """The hosts directory dnsmasq serves, and the lock that orders name claims."""

    def __init__(self, path: Path, lock_path: Path) -> None:
        self.path = path
        self._lock_path = lock_path

    def register(
        self,
        container_id: str,
        ifname: str,
        address: ipaddress.IPv4Address,
        pod: str,
        namespace: str,
    ) -> Record | None:
        """Write the pod's record; None (and nothing written) if it has no valid name."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self._lock_path):
            claimed = {
                name
                for other in self.records()
                if other.container_id != container_id
                for name in other.names
            }
            names = names_for(pod, namespace, claimed)
            if not names:
                return None
            record = Record(container_id, ifname, address, tuple(names))
            write_atomic(self.path / container_id, render(record))
            return record

    def read(self, container_id: str) -> Record | None:
        try:
            return parse(container_id, (self.path / container_id).read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def remove(self, container_id: str, ifname: str | None = None) -> bool:
        """Remove the container's record (only if it is for `ifname`, when given)."""
        record = self.read(container_id)
        if record is None or (ifname is not None and record.ifname != ifname):
            return False
        return remove_durably(self.path / container_id)

    def records(self) -> list[Record]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name.startswith("."):
                continue
            record = self.read(name)
            if record is not None:
                found.append(record)
        return found
