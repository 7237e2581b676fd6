"""Address leases: one file per address under `<stateDir>/leases/`, taken under a file lock.

A lease file is named after its address and holds the owner (`<container id>\\n<ifname>\\n`).
Its existence is the reservation, so a plugin that crashes mid-ADD never hands the address out
twice; DEL or GC removes it. No fsync: a reservation must survive a process crash, which needs
none, and after a power loss the pods are recreated and GC reconciles the leftovers.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from cni.errors import ADDRESS_POOL_EXHAUSTED, CniError
from smarter_common.locks import FileLock

_LOCK = ".lock"
_LAST = ".last"


@dataclass(frozen=True)
class Lease:
    address: ipaddress.IPv4Address
    container_id: str
    ifname: str


def choose_address(
    first: int, last: int, taken: Collection[int], after: int | None = None
) -> int | None:
    """The next free address in [first, last] after `after` (wrapping), or None if all taken.

    Continuing after the last one handed out, as host-local does, keeps a just-freed address
    (and any cached DNS answer for it) out of use for as long as possible.
    """
    size = last - first + 1
    start = first if after is None or not first <= after <= last else after + 1
    for step in range(size):
        candidate = first + (start - first + step) % size
        if candidate not in taken:
            return candidate
    return None


class LeaseStore:
    """The leases of one address range."""

    def __init__(
        self,
        directory: Path,
        first: ipaddress.IPv4Address,
        last: ipaddress.IPv4Address,
        reserved: Collection[ipaddress.IPv4Address] = (),
    ) -> None:
        self.directory = directory
        self._first = int(first)
        self._last = int(last)
        self._reserved = {int(a) for a in reserved}

    def acquire(self, container_id: str, ifname: str) -> ipaddress.IPv4Address:
        """The address leased to (container_id, ifname): the existing one, else a new one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with FileLock(self.directory / _LOCK):
            leases = self.leases()
            for lease in leases:
                if (lease.container_id, lease.ifname) == (container_id, ifname):
                    return lease.address
            taken = {int(lease.address) for lease in leases} | self._reserved
            chosen = choose_address(self._first, self._last, taken, self._read_last())
            if chosen is None:
                raise CniError(
                    ADDRESS_POOL_EXHAUSTED,
                    "no free address",
                    f"all {self.leasable} leasable addresses from"
                    f" {ipaddress.IPv4Address(self._first)} to"
                    f" {ipaddress.IPv4Address(self._last)} are leased{self._reserved_note()}",
                    hint="widen the subnet or range, or run GC to free leases of dead pods",
                )
            address = ipaddress.IPv4Address(chosen)
            self._create(self.directory / str(address), f"{container_id}\n{ifname}\n")
            (self.directory / _LAST).write_text(str(address))
            return address

    @property
    def leasable(self) -> int:
        """How many addresses of the range can be leased (the reserved ones cannot)."""
        return self._last - self._first + 1 - len(self._reserved_in_range())

    def _reserved_in_range(self) -> list[int]:
        return sorted(a for a in self._reserved if self._first <= a <= self._last)

    def _reserved_note(self) -> str:
        reserved = [str(ipaddress.IPv4Address(a)) for a in self._reserved_in_range()]
        return f" ({', '.join(reserved)} reserved: the gateway)" if reserved else ""

    def release(self, container_id: str, ifname: str) -> list[ipaddress.IPv4Address]:
        """Remove every lease of (container_id, ifname); the addresses freed."""
        if not self.directory.is_dir():
            return []
        with FileLock(self.directory / _LOCK):
            return self._remove(
                [x for x in self.leases() if (x.container_id, x.ifname) == (container_id, ifname)]
            )

    def release_all_but(self, keep: Collection[tuple[str, str]]) -> list[Lease]:
        """Remove the leases whose owner is not in `keep`; the leases removed."""
        if not self.directory.is_dir():
            return []
        with FileLock(self.directory / _LOCK):
            stale = [x for x in self.leases() if (x.container_id, x.ifname) not in keep]
            self._remove(stale)
            return stale

    def find(self, container_id: str, ifname: str) -> ipaddress.IPv4Address | None:
        for lease in self.leases():
            if (lease.container_id, lease.ifname) == (container_id, ifname):
                return lease.address
        return None

    def leases(self) -> list[Lease]:
        found = []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        directory = os.fspath(self.directory)
        for name in names:
            if name.startswith("."):
                continue
            try:
                address = ipaddress.IPv4Address(name)
                # A plain string path: every ADD reads every lease (pathlib costs more).
                with open(os.path.join(directory, name), encoding="utf-8") as stream:
                    owner = stream.read().split("\n")
            except (ValueError, FileNotFoundError):
                continue
            # A lease cut short by a crash has no owner: it still reserves its address.
            container_id = owner[0] if owner else ""
            ifname = owner[1] if len(owner) > 1 else ""
            found.append(Lease(address, container_id, ifname))
        return found

    def _read_last(self) -> int | None:
        try:
            return int(ipaddress.IPv4Address((self.directory / _LAST).read_text().strip()))
        except (FileNotFoundError, ValueError):
            return None

    def _remove(self, leases: list[Lease]) -> list[ipaddress.IPv4Address]:
        removed = []
        for lease in leases:
            try:
                (self.directory / str(lease.address)).unlink()
            except FileNotFoundError:
                continue
            removed.append(lease.address)
        return removed

    @staticmethod
    def _create(path: Path, content: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, content.encode())
        finally:
            os.close(fd)
