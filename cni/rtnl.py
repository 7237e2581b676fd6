"""Just enough rtnetlink for the pod path, with the standard library's socket and struct.

ADD and DEL need five kernel requests (look up a link, create a veth pair straight into the
pod's namespace with its host end on the bridge and both ends up, add an address, add a route,
delete a link). Encoding them here takes microseconds, where importing pyroute2 takes ~150 ms
and each of its calls spins an asyncio loop; so the in-process fallback stays fast and the
agent's work is a few syscalls. CHECK, GC and STATUS, which are rare, use pyroute2.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24

_IFLA_ADDRESS = 1
_IFLA_IFNAME = 3
_IFLA_MTU = 4
_IFLA_MASTER = 10
_IFLA_LINKINFO = 18
_IFLA_NET_NS_FD = 28
_IFLA_INFO_KIND = 1
_IFLA_INFO_DATA = 2
_VETH_INFO_PEER = 1
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_RTA_DST = 1
_RTA_OIF = 4
_RTA_GATEWAY = 5
_RT_TABLE_MAIN = 254
_RTPROT_BOOT = 3
_RTN_UNICAST = 1
IFF_UP = 0x1

_HEADER = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBi")
_RTMSG = struct.Struct("=BBBBBBBBI")
_ATTR = struct.Struct("=HH")


class NetlinkError(OSError):
    """The kernel refused a request; `errno` says why."""


@dataclass(frozen=True)
class LinkInfo:
    name: str
    index: int
    up: bool
    kind: str | None
    mac: str
    master: int | None


def _attr(kind: int, payload: bytes) -> bytes:
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _name(value: str) -> bytes:
    return value.encode() + b"\0"


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def random_mac() -> str:
    """A random locally administered unicast MAC address, as the kernel would pick."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{octet:02x}" for octet in octets)


def _parse_attrs(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    offset = 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        attrs[kind & 0x3FFF] = data[offset + _ATTR.size : offset + length]
        offset += (length + 3) & ~3
    return attrs


class Rtnl:
    """One rtnetlink socket, in the network namespace of the thread that opened it."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        self._seq += 1
        seq = self._seq
        message = _HEADER.pack(_HEADER.size + len(body), kind, flags | _NLM_F_REQUEST, seq, 0)
        self._sock.send(message + body)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind_, _, seq_, _ = _HEADER.unpack_from(data, offset)
                payload = data[offset + _HEADER.size : offset + length]
                offset += (length + 3) & ~3
                if seq_ != seq:
                    continue
                if kind_ == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise NetlinkError(code, os.strerror(code))
                    return replies
                if kind_ == _NLMSG_DONE:
                    return replies
                replies.append((kind_, payload))
                if not flags & _NLM_F_ACK:
                    return replies

    def get_link(self, name: str) -> LinkInfo | None:
        """The link called `name`, or None."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(_IFLA_IFNAME, _name(name))
        try:
            replies = self._request(RTM_GETLINK, 0, body)
        except NetlinkError as error:
            if error.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        for kind, payload in replies:
            if kind == RTM_NEWLINK:
                return _link_info(payload)
        return None

    def create_bridge(self, name: str, mtu: int, mac: str) -> None:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP) + b"".join(
            (
                _attr(_IFLA_IFNAME, _name(name)),
                _attr(_IFLA_MTU, _u32(mtu)),
                _attr(_IFLA_ADDRESS, _mac_bytes(mac)),
                _attr(_IFLA_LINKINFO, _attr(_IFLA_INFO_KIND, b"bridge")),
            )
        )
        self._request(RTM_NEWLINK, _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL, body)

    def set_up(self, index: int) -> None:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
        self._request(RTM_NEWLINK, _NLM_F_ACK, body)

    def create_veth(
        self,
        host_name: str,
        host_mac: str,
        master: int,
        peer_name: str,
        peer_mac: str,
        peer_netns_fd: int,
        mtu: int,
    ) -> None:
        """A veth pair: `host_name` up on bridge `master`, the peer (down) in the netns.

        The peer cannot be brought up in the same request: the kernel opens it before the
        pair is joined, and a veth without its peer refuses to open (ENOTCONN).
        """
        peer = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + b"".join(
            (
                _attr(_IFLA_IFNAME, _name(peer_name)),
                _attr(_IFLA_ADDRESS, _mac_bytes(peer_mac)),
                _attr(_IFLA_MTU, _u32(mtu)),
                _attr(_IFLA_NET_NS_FD, _u32(peer_netns_fd)),
            )
        )
        linkinfo = _attr(_IFLA_INFO_KIND, b"veth") + _attr(
            _IFLA_INFO_DATA, _attr(_VETH_INFO_PEER, peer)
        )
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP) + b"".join(
            (
                _attr(_IFLA_IFNAME, _name(host_name)),
                _attr(_IFLA_ADDRESS, _mac_bytes(host_mac)),
                _attr(_IFLA_MTU, _u32(mtu)),
                _attr(_IFLA_MASTER, _u32(master)),
                _attr(_IFLA_LINKINFO, linkinfo),
            )
        )
        self._request(RTM_NEWLINK, _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL, body)

    def delete_link(self, name: str) -> bool:
        """Delete the link `name`; False if there is none."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(_IFLA_IFNAME, _name(name))
        try:
            self._request(RTM_DELLINK, _NLM_F_ACK, body)
        except NetlinkError as error:
            if error.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    def add_address(self, index: int, address: bytes, prefixlen: int) -> None:
        """Add an IPv4 address; EEXIST is raised as NetlinkError if it is already there."""
        body = _IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, 0, index) + b"".join(
            (_attr(_IFA_LOCAL, address), _attr(_IFA_ADDRESS, address))
        )
        self._request(RTM_NEWADDR, _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL, body)

    def add_default_route(self, index: int, gateway: bytes) -> None:
        body = _RTMSG.pack(
            socket.AF_INET, 0, 0, 0, _RT_TABLE_MAIN, _RTPROT_BOOT, 0, _RTN_UNICAST, 0
        ) + b"".join((_attr(_RTA_GATEWAY, gateway), _attr(_RTA_OIF, _u32(index))))
        self._request(RTM_NEWROUTE, _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL, body)


def _link_info(payload: bytes) -> LinkInfo:
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(payload)
    attrs = _parse_attrs(payload[_IFINFOMSG.size :])
    kind = None
    if _IFLA_LINKINFO in attrs:
        info = _parse_attrs(attrs[_IFLA_LINKINFO])
        if _IFLA_INFO_KIND in info:
            kind = info[_IFLA_INFO_KIND].rstrip(b"\0").decode()
    mac = ":".join(f"{octet:02x}" for octet in attrs.get(_IFLA_ADDRESS, b""))
    master = struct.unpack("=I", attrs[_IFLA_MASTER])[0] if _IFLA_MASTER in attrs else None
    return LinkInfo(
        name=attrs.get(_IFLA_IFNAME, b"").rstrip(b"\0").decode(),
        index=index,
        up=bool(flags & IFF_UP),
        kind=kind,
        mac=mac,
        master=master,
    )
