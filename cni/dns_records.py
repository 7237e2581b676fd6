"""Pod names in DNS: one hosts file per container, in the directory dnsmasq serves.

A record is `<hostsDir>/<container id>`, replaced atomically so dnsmasq (which follows the
directory by inotify) never reads half a file:

    # smarter-cni container=<id> ifname=<ifname> added=<ns since the epoch>
    <ip> <pod> <pod>.<namespace> [<app>]

A name is never in two records. The application name goes to the first pod that claims it
while no other record holds it (as its app name or as a pod name); a pod whose own name is
another record's app name takes it from that record. When a record that held a name goes, the
oldest remaining pod with that application name gets it. All of it under one lock.

Records are not fsynced: after a power loss the pods they name are gone too, and on an SD
card an fsync costs more than the rest of an ADD.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from cni.names import app_name, dns_safe_label
from smarter_common.atomic import remove_durably, write_atomic
from smarter_common.locks import FileLock

_HEADER = "# smarter-cni"


@dataclass(frozen=True)
class Record:
    container_id: str
    ifname: str
    address: ipaddress.IPv4Address
    names: tuple[str, ...]
    # When the pod was first registered (time.time_ns()): who is oldest at an app name handover.
    added: int = 0

    @property
    def pod(self) -> str:
        return self.names[0] if self.names else ""

    @property
    def app(self) -> str | None:
        """The application name this record holds, if it holds it."""
        app = app_name(self.pod)
        return app if app is not None and app in self.names else None


def names_for(pod: str, namespace: str, claimed: Collection[str]) -> list[str]:
    """The names a pod gets: pod, pod.namespace, and its app name when nobody else has it.

    Names are registered in their DNS-safe form (cni.names.dns_safe_label); a pod whose name
    or namespace has none gets no name. A converted name is ambiguous while another record
    holds that form (`Web_1` beside `web_1`): then it gets none either. Only a Kubernetes
    pod name (one that needed no conversion) has an application name.
    """
    label, domain = dns_safe_label(pod), dns_safe_label(namespace)
    if label is None or domain is None or (label != pod and label in claimed):
        return []
    names = [label, f"{label}.{domain}"]
    app = app_name(pod) if label == pod else None
    if app is not None and app not in claimed:
        names.append(app)
    return names


def heir(name: str, remaining: Iterable[Record]) -> Record | None:
    """The record that should now hold the app name `name`, or None.

    The oldest record whose pod has `name` as its application name; nobody if some record
    already holds `name` (a pod of that very name, or an app name never given up).
    """
    records = list(remaining)
    if any(name in record.names for record in records):
        return None
    candidates = [record for record in records if app_name(record.pod) == name]
    return min(candidates, key=lambda record: (record.added, record.container_id), default=None)


def render(record: Record) -> str:
    return (
        f"{_HEADER} container={record.container_id} ifname={record.ifname}"
        f" added={record.added}\n"
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
        added = int(fields.get("added", "0"))
    except ValueError:
        return None
    return Record(
        fields.get("container", container_id), fields.get("ifname", ""), ip, tuple(names), added
    )


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
        with self._locked():
            others = [r for r in self.records() if r.container_id != container_id]
            names = names_for(pod, namespace, {name for other in others for name in other.names})
            if not names:
                return None
            previous = self.read(container_id)
            added = previous.added if previous is not None else time.time_ns()
            record = Record(container_id, ifname, address, tuple(names), added)
            for other in others:
                if other.app == pod:
                    # The name is this pod's own: the other keeps its pod names only.
                    kept = replace(other, names=tuple(n for n in other.names if n != pod))
                    write_atomic(self.path / other.container_id, render(kept), durable=False)
            write_atomic(self.path / container_id, render(record), durable=False)
            return record

    def read(self, container_id: str) -> Record | None:
        # Plain string paths: every ADD reads every record, and pathlib's objects cost more
        # than the reads on a node with a few dozen pods.
        path = os.path.join(self.path, container_id)
        try:
            with open(path, encoding="utf-8") as stream:
                record = parse(container_id, stream.read())
            if record is not None and not record.added:
                # Written before records carried `added`: the file's age is the best guess.
                record = replace(record, added=os.stat(path).st_mtime_ns)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return record

    def remove(self, container_id: str, ifname: str | None = None) -> bool:
        """Remove the container's record (only if it is for `ifname`, when given).

        A name it held passes to the oldest remaining pod of that application.
        """
        if not self.path.is_dir():
            return False
        with self._locked():
            record = self.read(container_id)
            if record is None or (ifname is not None and record.ifname != ifname):
                return False
            removed = remove_durably(self.path / container_id)
            remaining = self.records()
            for name in record.names:
                successor = heir(name, remaining)
                if successor is not None:
                    taken = replace(successor, names=(*successor.names, name))
                    write_atomic(self.path / successor.container_id, render(taken), durable=False)
                    remaining = [taken if r is successor else r for r in remaining]
            return removed

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

    def _locked(self) -> FileLock:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(self._lock_path)
