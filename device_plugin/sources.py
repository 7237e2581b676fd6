"""What a device source offers: the resources that exist now and how to hand each to a container.

The plugin core (server.py) knows nothing of `/dev` or remoteproc; it serves whatever `Offer`s the
sources return from `scan()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from smarter_common.hostroot import HostRoot

PERMISSIONS = "rw"
# How device paths are handed to the kubelet: as the host sees them (the host root is the host's
# `/` mounted in this container), or as this process sees them (the host root is a directory on
# the machine that runs the kubelet and runtime, as with the simulated gateway).
PathView = Literal["host", "local"]
PATH_VIEWS: tuple[PathView, ...] = ("host", "local")


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


def handed_path(host: HostRoot, real: Path, view: PathView) -> str:
    """The path of `real` (a path under the host root here) for the kubelet and runtime."""
    return str(real) if view == "local" else str(host.to_host(real))
