"""What a device source offers: the resources that exist now and how to hand each to a container.

The plugin core (server.py) knows nothing of `/dev` or remoteproc; it serves whatever `Offer`s the
sources return from `scan()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

PERMISSIONS = "rw"


@dataclass(frozen=True)
class DeviceNode:
    """One device node for the container: `host_path` as the kubelet and runtime see the host."""

    container_path: str
    host_path: str
    permissions: str = PERMISSIONS


@dataclass(frozen=True)
class Offer:
    """A resource that exists now: its device IDs and what Allocate gives a container."""

    resource: str
    ids: tuple[str, ...]
    nodes: tuple[DeviceNode, ...] = ()
    envs: Mapping[str, str] = field(default_factory=dict)

    @property
    def short_name(self) -> str:
        return self.resource.split("/", 1)[-1]


class Source(Protocol):
    """A kind of device: answers which resources exist now."""

    name: str

    def scan(self) -> list[Offer]: ...
