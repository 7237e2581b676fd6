"""Links, addresses and routes, through netlink.

ADD and DEL speak rtnetlink directly (cni.rtnl, standard library); CHECK and GC, which list
addresses, routes and links, use pyroute2, imported only when they run.

Pod-side work runs in a short-lived thread that joins the pod's network namespace with
setns(2): the thread's netlink socket is then bound to that namespace. This costs ~2 ms where
pyroute2's NetNS, which forks a helper process, costs ~12 ms. `os.setns` only exists from
Python 3.12, hence ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cni import rtnl
from cni.errors import NETWORK_SETUP_FAILED, CniError

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
HOST_IFNAME_PREFIX = "scni"
_libc: Any = None


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    mac: str


@dataclass(frozen=True)
class PodInterface:
    """What the pod's interface looks like now (for CHECK)."""

    link: Link
    up: bool
    addresses: tuple[ipaddress.IPv4Interface, ...] = ()
    default_gateways: tuple[ipaddress.IPv4Address, ...] = field(default=())


def host_ifname(container_id: str, ifname: str) -> str:
    """The host end's name: derived from the attachment, so DEL and GC find it with no state."""
    digest = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()
    return f"{HOST_IFNAME_PREFIX}{digest[:11]}"


def bridge_mac(gateway: ipaddress.IPv4Interface) -> str:
    """A fixed, locally administered MAC for the bridge.

    Without one a bridge takes the lowest MAC of its ports, so it changes when a pod goes and
    the other pods' ARP entries for the gateway point nowhere until they expire.
    """
    return "02:5c:" + ":".join(f"{octet:02x}" for octet in gateway.ip.packed)


def in_netns(netns_path: str, work: Callable[[], T]) -> T:
    """Run `work` in a thread that has joined the network namespace at `netns_path`."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            _setns(netns_path)
            outcome["value"] = work()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, name="netns")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


def _setns(netns_path: str) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns({netns_path}): {os.strerror(code)}")
    finally:
        os.close(fd)


def _iproute() -> Any:
    from pyroute2 import IPRoute

    return IPRoute()


def _link(ipr: Any, name: str) -> Any | None:
    indexes = ipr.link_lookup(ifname=name)
    if not indexes:
        return None
    links = ipr.get_links(indexes[0])
    return links[0] if links else None


def _as_link(link: Any) -> Link:
    return Link(
        str(link.get_attr("IFLA_IFNAME")), int(link["index"]), str(link.get_attr("IFLA_ADDRESS"))
    )


def _addresses(ipr: Any, index: int) -> tuple[ipaddress.IPv4Interface, ...]:
    return tuple(
        ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
        for a in ipr.get_addr(family=socket.AF_INET, index=index)
    )


def ensure_bridge(name: str, gateway: ipaddress.IPv4Interface, mtu: int) -> Link:
    """The bridge `name`, up, holding the gateway address: created or completed as needed.

    Safe when several ADDs race: whoever loses the creation finds the winner's bridge.
    """
    with rtnl.Rtnl() as nl:
        link = nl.get_link(name)
        if link is None:
            try:
                nl.create_bridge(name, mtu, bridge_mac(gateway))
            except rtnl.NetlinkError as error:
                if error.errno != errno.EEXIST:
                    raise _setup_failed(f"cannot create bridge {name}", error) from error
            link = nl.get_link(name)
            if link is None:
                raise CniError(NETWORK_SETUP_FAILED, f"bridge {name} vanished after creation")
        if link.kind != "bridge":
            raise CniError(
                NETWORK_SETUP_FAILED,
                f"{name} is not a bridge",
                f"a {link.kind or 'plain'} link of that name exists",
                hint="remove it or choose another 'bridge' in the network configuration",
            )
        try:
            nl.add_address(link.index, gateway.ip.packed, gateway.network.prefixlen)
        except rtnl.NetlinkError as error:
            if error.errno != errno.EEXIST:
                raise _setup_failed(f"cannot add {gateway} to {name}", error) from error
        if not link.up:
            nl.set_up(link.index)
    _enable_forwarding()
    return Link(link.name, link.index, link.mac)


def bridge_problem(name: str) -> str | None:
    """Why the bridge `name` cannot be used, or None (a missing bridge is fine: ADD makes it)."""
    with rtnl.Rtnl() as nl:
        link = nl.get_link(name)
    if link is not None and link.kind != "bridge":
        return f"{name} exists but is a {link.kind or 'plain'} link, not a bridge"
    return None


def _enable_forwarding() -> None:
    # Per network namespace: this process's, which is the node's.
    path = Path("/proc/sys/net/ipv4/ip_forward")
    if path.read_text().strip() != "1":
        path.write_text("1")


def add_pod_interface(
    netns_path: str,
    host_name: str,
    ifname: str,
    bridge_index: int,
    address: ipaddress.IPv4Interface,
    gateway: ipaddress.IPv4Address,
    mtu: int,
) -> tuple[Link, Link]:
    """A veth pair: `host_name` on the bridge, `ifname` in the pod with address and route."""
    host_mac, pod_mac = rtnl.random_mac(), rtnl.random_mac()
    nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with rtnl.Rtnl() as nl:
            _create_veth(nl, host_name, host_mac, bridge_index, ifname, pod_mac, nsfd, mtu)
            host = nl.get_link(host_name)
            if host is None:
                raise CniError(NETWORK_SETUP_FAILED, f"veth {host_name} vanished after creation")
    finally:
        os.close(nsfd)

    def configure_pod() -> Link:
        with rtnl.Rtnl() as nl:
            link = nl.get_link(ifname)
            if link is None:
                raise CniError(NETWORK_SETUP_FAILED, f"{ifname} did not arrive in {netns_path}")
            if not link.up:
                nl.set_up(link.index)
            nl.add_address(link.index, address.ip.packed, address.network.prefixlen)
            nl.add_default_route(link.index, gateway.packed)
            return Link(link.name, link.index, link.mac)

    try:
        pod = in_netns(netns_path, configure_pod)
    except CniError:
        raise
    except OSError as error:
        raise _setup_failed(f"cannot configure {ifname} in {netns_path}", error) from error
    return Link(host.name, host.index, host.mac), pod


def _create_veth(
    nl: rtnl.Rtnl,
    host_name: str,
    host_mac: str,
    bridge_index: int,
    ifname: str,
    pod_mac: str,
    nsfd: int,
    mtu: int,
) -> None:
    for attempt in (1, 2):
        try:
            nl.create_veth(host_name, host_mac, bridge_index, ifname, pod_mac, nsfd, mtu)
            return
        except rtnl.NetlinkError as error:
            if error.errno == errno.EEXIST and attempt == 1 and nl.delete_link(host_name):
                # Left by an ADD of this attachment that died half-way: replace it.
                continue
            if error.errno == errno.EEXIST:
                raise CniError(
                    NETWORK_SETUP_FAILED,
                    f"interface {ifname} already exists in the pod's network namespace",
                ) from error
            raise _setup_failed(f"cannot create veth {host_name}", error) from error


def delete_link(name: str) -> bool:
    """Delete the link `name` (its veth peer goes with it); False if there was none."""
    with rtnl.Rtnl() as nl:
        try:
            return nl.delete_link(name)
        except rtnl.NetlinkError as error:
            raise _setup_failed(f"cannot delete {name}", error) from error


def links_named(prefix: str) -> list[str]:
    with _iproute() as ipr:
        names = [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]
    return [name for name in names if name.startswith(prefix)]


def link_index(name: str) -> int | None:
    with rtnl.Rtnl() as nl:
        link = nl.get_link(name)
    return None if link is None else link.index


def link_master(name: str) -> tuple[bool, int | None]:
    """Whether the link `name` exists, and the index of the bridge it is enslaved to."""
    with rtnl.Rtnl() as nl:
        link = nl.get_link(name)
    return (False, None) if link is None else (True, link.master)


def pod_interface(netns_path: str, ifname: str) -> PodInterface | None:
    """The pod's interface `ifname` as it is now, or None if it does not exist."""

    def look() -> PodInterface | None:
        with _iproute() as ipr:
            link = _link(ipr, ifname)
            if link is None:
                return None
            index = int(link["index"])
            gateways = tuple(
                ipaddress.IPv4Address(route.get_attr("RTA_GATEWAY"))
                for route in ipr.get_routes(family=socket.AF_INET, table=254)
                if route["dst_len"] == 0
                and route.get_attr("RTA_GATEWAY")
                and route.get_attr("RTA_OIF") == index
            )
            return PodInterface(
                link=_as_link(link),
                up=bool(link["flags"] & 1),
                addresses=_addresses(ipr, index),
                default_gateways=gateways,
            )

    return in_netns(netns_path, look)


def _setup_failed(what: str, error: BaseException) -> CniError:
    return CniError(NETWORK_SETUP_FAILED, what, str(error) or type(error).__name__)
