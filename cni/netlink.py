"""Links, addresses and routes, through pyroute2.

Node side: one `IPRoute` on the node's network namespace, opened on first use and kept for the
life of the process (the agent's: so an ADD pays for no import, socket or event loop). pyroute2
keeps its socket and event loop per thread and, called from another thread, opens a new socket
in that thread's namespace; so the `IPRoute` lives in one thread of its own and every node-side
call runs there.

Pod side: a short-lived thread joins the pod's namespace with setns(2), checks that it is in it,
opens a NETLINK_ROUTE socket (bound to that namespace for good) and hands it to
`IPRoute(use_socket=...)`, which then never opens one of its own. Everything on the pod side runs
in that thread, so nothing can reach the node's namespace even by mistake, and each change is
made on a link first identified as the veth end this ADD created (kind veth, its own MAC).
This costs ~2 ms where pyroute2's `NetNS`, which forks a helper per socket, costs ~12 ms.
`os.setns` only exists from Python 3.12, hence ctypes.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cni.errors import INVALID_ENVIRONMENT, NETWORK_SETUP_FAILED, TRY_AGAIN_LATER, CniError

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
# ioctl(2) on a namespace file: its CLONE_NEW* type (linux/nsfs.h, _IO(0xb7, 0x3); Linux 4.11).
_NS_GET_NSTYPE = 0xB703
_IFF_UP = 0x1
_RT_TABLE_MAIN = 254
_RTPROT_BOOT = 3
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


def random_mac() -> str:
    """A random locally administered unicast MAC address, as the kernel would pick."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{octet:02x}" for octet in octets)


# -- the node's namespace --------------------------------------------------------------------


class _NodeRoute:
    """The node's `IPRoute`, owned by one thread; `run(work)` calls `work(ipr)` there."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._ipr: Any = None
        self._lock = threading.Lock()

    def run(self, work: Callable[[Any], T]) -> T:
        with self._lock:
            if self._executor is None:
                # The worker inherits the namespace of the thread that starts it: the node's.
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
            executor = self._executor
        return executor.submit(self._call, work).result()

    def _call(self, work: Callable[[Any], T]) -> T:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute(groups=0)
        return work(self._ipr)


_node = _NodeRoute()


def _netlink_errno(error: BaseException) -> int | None:
    code = getattr(error, "code", None)
    if isinstance(code, int):
        return code
    return getattr(error, "errno", None)


def _get_link(ipr: Any, name: str) -> Any | None:
    """The link message for `name`, or None if there is no such link."""
    try:
        links = ipr.link("get", ifname=name)
    except Exception as error:
        if _netlink_errno(error) in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return links[0] if links else None


def _kind(link: Any) -> str | None:
    kind = link.get(("linkinfo", "kind"))
    return None if kind is None else str(kind)


def _as_link(link: Any) -> Link:
    return Link(str(link.get("ifname")), int(link["index"]), str(link.get("address")))


def _is_up(link: Any) -> bool:
    return bool(link["flags"] & _IFF_UP)


def ensure_bridge(name: str, gateway: ipaddress.IPv4Interface, mtu: int) -> Link:
    """The bridge `name`, up, holding the gateway address: created or completed as needed.

    Safe when several ADDs race: whoever loses the creation finds the winner's bridge.
    """

    def ensure(ipr: Any) -> Link:
        link = _get_link(ipr, name)
        if link is None:
            try:
                ipr.link(
                    "add",
                    ifname=name,
                    kind="bridge",
                    mtu=mtu,
                    address=bridge_mac(gateway),
                    state="up",
                )
            except Exception as error:
                if _netlink_errno(error) != errno.EEXIST:
                    raise _setup_failed(f"cannot create bridge {name}", error) from error
            link = _get_link(ipr, name)
            if link is None:
                raise CniError(NETWORK_SETUP_FAILED, f"bridge {name} vanished after creation")
        kind = _kind(link)
        if kind != "bridge":
            raise CniError(
                NETWORK_SETUP_FAILED,
                f"{name} is not a bridge",
                f"a {kind or 'plain'} link of that name exists",
                hint="remove it or choose another 'bridge' in the network configuration",
            )
        index = int(link["index"])
        try:
            ipr.addr(
                "add",
                index=index,
                address=str(gateway.ip),
                prefixlen=gateway.network.prefixlen,
            )
        except Exception as error:
            if _netlink_errno(error) != errno.EEXIST:
                raise _setup_failed(f"cannot add {gateway} to {name}", error) from error
        if not _is_up(link):
            ipr.link("set", index=index, state="up")
        return _as_link(link)

    try:
        bridge = _node.run(ensure)
    except CniError:
        raise
    except Exception as error:
        raise _setup_failed(f"cannot set up bridge {name}", error) from error
    _enable_forwarding()
    return bridge


def bridge_problem(name: str) -> str | None:
    """Why the bridge `name` cannot be used, or None (a missing bridge is fine: ADD makes it)."""
    link = _node.run(lambda ipr: _get_link(ipr, name))
    if link is not None and _kind(link) != "bridge":
        return f"{name} exists but is a {_kind(link) or 'plain'} link, not a bridge"
    return None


def _enable_forwarding() -> None:
    # Per network namespace: this process's, which is the node's. In a container /proc/sys is
    # read-only, so the node's own setting must then already be on.
    path = Path("/proc/sys/net/ipv4/ip_forward")
    if path.read_text().strip() == "1":
        return
    try:
        path.write_text("1")
    except OSError as error:
        raise CniError(
            NETWORK_SETUP_FAILED,
            "IPv4 forwarding is off on this node and cannot be turned on from here",
            str(error),
            hint="sysctl -w net.ipv4.ip_forward=1, and persist it in /etc/sysctl.d/",
        ) from error


def delete_link(name: str) -> bool:
    """Delete the link `name` (its veth peer goes with it); False if there was none."""

    def delete(ipr: Any) -> bool:
        try:
            ipr.link("del", ifname=name)
        except Exception as error:
            if _netlink_errno(error) in (errno.ENODEV, errno.ENOENT):
                return False
            raise _setup_failed(f"cannot delete {name}", error) from error
        return True

    return _node.run(delete)


def links_named(prefix: str) -> list[str]:
    def names(ipr: Any) -> list[str]:
        return [str(link.get("ifname")) for link in ipr.link("dump")]

    return [name for name in _node.run(names) if name.startswith(prefix)]


def link_index(name: str) -> int | None:
    link = _node.run(lambda ipr: _get_link(ipr, name))
    return None if link is None else int(link["index"])


def link_master(name: str) -> tuple[bool, int | None]:
    """Whether the link `name` exists, and the index of the bridge it is enslaved to."""
    link = _node.run(lambda ipr: _get_link(ipr, name))
    if link is None:
        return False, None
    master = link.get("master")
    return True, None if master is None else int(master)


# -- the pod's namespace ---------------------------------------------------------------------


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
    """Move the calling thread into the namespace at `netns_path`, and check it is there."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns({netns_path}): {os.strerror(code)}")
        wanted = os.fstat(fd)
    finally:
        os.close(fd)
    now = os.stat("/proc/thread-self/ns/net")
    if (now.st_dev, now.st_ino) != (wanted.st_dev, wanted.st_ino):
        raise OSError(errno.EINVAL, f"setns({netns_path}) left the thread in another namespace")


def in_pod(netns_path: str, work: Callable[[Any], T]) -> T:
    """`work(ipr)` with an `IPRoute` whose only socket is in the namespace at `netns_path`."""

    def run() -> T:
        from pyroute2 import IPRoute

        # SOCK_DGRAM: asyncio, under pyroute2, takes no other type (netlink treats both alike).
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
        try:
            ipr = IPRoute(use_socket=sock, groups=0)
            try:
                return work(ipr)
            finally:
                ipr.close()
        finally:
            sock.close()

    return in_netns(netns_path, run)


def refuse_unusable_netns(netns_path: str) -> None:
    """Refuse a "pod" namespace that is not a network namespace, or is the node's own.

    Checked before anything is created: the kernel would only refuse the veth later, with an
    EINVAL that says nothing of the path.
    """
    try:
        target = os.stat(netns_path)
    except OSError:
        return  # not there: the caller reports that in its own words
    kind = _namespace_kind(netns_path)
    if kind != _CLONE_NEWNET:
        found = _file_kind(target.st_mode) if kind is None else "another kind of namespace"
        raise CniError(
            INVALID_ENVIRONMENT,
            "CNI_NETNS is not a network namespace",
            f"{netns_path} is {found}",
            hint="pass the path of the container's network namespace, e.g. /run/netns/<name>",
        )
    own = os.stat("/proc/thread-self/ns/net")
    if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
        raise CniError(
            INVALID_ENVIRONMENT,
            "CNI_NETNS is the node's own network namespace",
            netns_path,
            hint="pass the container's network namespace",
        )


def _namespace_kind(path: str) -> int | None:
    """The CLONE_NEW* type of the namespace file at `path`; None if it is not one."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        return None  # ENOTTY: a file, directory or device, not a namespace
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    import stat

    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a special file"


def add_pod_interface(
    netns_path: str,
    host_name: str,
    ifname: str,
    bridge_index: int,
    address: ipaddress.IPv4Interface,
    gateway: ipaddress.IPv4Address,
    mtu: int,
) -> tuple[Link, Link]:
    """A veth pair: `host_name` on the bridge, `ifname` in the pod with address and route.

    The caller has refused an unusable namespace (`refuse_unusable_netns`) before taking a lease.
    """
    host_mac, pod_mac = random_mac(), random_mac()
    try:
        nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise _setup_failed(f"cannot open {netns_path}", error) from error
    try:
        _node.run(
            lambda ipr: _create_veth(
                ipr, host_name, host_mac, bridge_index, ifname, pod_mac, nsfd, mtu
            )
        )
    finally:
        os.close(nsfd)

    def configure_pod(ipr: Any) -> tuple[Link, Link]:
        link = _get_link(ipr, ifname)
        # The peer this ADD made, or nothing is touched: a veth with the MAC drawn above,
        # whose own peer (IFLA_LINK, an index in the node's namespace) is the host end.
        if link is None or _kind(link) != "veth" or link.get("address") != pod_mac:
            raise CniError(NETWORK_SETUP_FAILED, f"{ifname} did not arrive in {netns_path}")
        index = int(link["index"])
        ipr.link("set", index=index, state="up")
        ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        ipr.route(
            "add",
            dst="0.0.0.0/0",
            gateway=str(gateway),
            oif=index,
            table=_RT_TABLE_MAIN,
            proto=_RTPROT_BOOT,
        )
        return Link(host_name, int(link.get("link")), host_mac), _as_link(link)

    try:
        return in_pod(netns_path, configure_pod)
    except CniError:
        raise
    except Exception as error:
        raise _setup_failed(f"cannot configure {ifname} in {netns_path}", error) from error


def _create_veth(
    ipr: Any,
    host_name: str,
    host_mac: str,
    bridge_index: int,
    ifname: str,
    pod_mac: str,
    nsfd: int,
    mtu: int,
) -> None:
    """Create the pair in one request: the host end up on the bridge, the peer in the pod.

    The peer cannot be brought up in the same request: the kernel opens it before the pair is
    joined, and a veth without its peer refuses to open (ENOTCONN).
    """
    for attempt in (1, 2):
        try:
            ipr.link(
                "add",
                ifname=host_name,
                kind="veth",
                address=host_mac,
                mtu=mtu,
                master=bridge_index,
                state="up",
                peer={"ifname": ifname, "address": pod_mac, "mtu": mtu, "net_ns_fd": nsfd},
            )
            return
        except Exception as error:
            code = _netlink_errno(error)
            if code == errno.EEXIST and attempt == 1 and _delete_quietly(ipr, host_name):
                # Left by an ADD of this attachment that died half-way: replace it.
                continue
            if code == errno.EEXIST:
                raise CniError(
                    NETWORK_SETUP_FAILED,
                    f"interface {ifname} already exists in the pod's network namespace",
                ) from error
            raise _setup_failed(f"cannot create veth {host_name}", error) from error


def _delete_quietly(ipr: Any, name: str) -> bool:
    try:
        ipr.link("del", ifname=name)
    except Exception as error:
        if _netlink_errno(error) in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True


def pod_interface(netns_path: str, ifname: str) -> PodInterface | None:
    """The pod's interface `ifname` as it is now, or None if it does not exist."""

    def look(ipr: Any) -> PodInterface | None:
        link = _get_link(ipr, ifname)
        if link is None:
            return None
        index = int(link["index"])
        gateways = tuple(
            ipaddress.IPv4Address(route.get("gateway"))
            for route in ipr.route("dump", family=socket.AF_INET, table=_RT_TABLE_MAIN)
            if route["dst_len"] == 0 and route.get("gateway") and route.get("oif") == index
        )
        addresses = tuple(
            ipaddress.IPv4Interface(f"{a.get('address')}/{a['prefixlen']}")
            for a in ipr.addr("dump", family=socket.AF_INET, index=index)
        )
        return PodInterface(
            link=_as_link(link), up=_is_up(link), addresses=addresses, default_gateways=gateways
        )

    return in_pod(netns_path, look)


# The kernel is busy, not refusing: the same request can succeed a moment later.
_TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EBUSY})


def _setup_failed(what: str, error: BaseException) -> CniError:
    """The CniError for a failed netlink request: 11 (try again later) if the kernel was busy."""
    transient = _netlink_errno(error) in _TRANSIENT_ERRNOS
    return CniError(
        TRY_AGAIN_LATER if transient else NETWORK_SETUP_FAILED,
        what,
        str(error) or type(error).__name__,
        hint="the kernel was busy; try again" if transient else None,
    )
