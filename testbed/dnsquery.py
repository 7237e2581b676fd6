"""A minimal DNS client (standard library): `python dnsquery.py SERVER NAME` prints A records.

Exit status 0 with the addresses one per line, 1 for NXDOMAIN or no answer, 2 on timeout.
The tests run it inside a pod's or the node's network namespace.
"""

from __future__ import annotations

import secrets
import socket
import struct
import sys


def query(server: str, name: str, timeout: float = 2.0) -> list[str] | None:
    """The A records of `name` from `server`; None on timeout."""
    ident = secrets.randbits(16)
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = header + question + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server, 53))
        try:
            while True:
                reply, _ = sock.recvfrom(4096)
                if struct.unpack("!H", reply[:2])[0] == ident:
                    break
        except TimeoutError:
            return None
    _, _, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", reply[:12])
    offset = 12
    for _ in range(qdcount):
        offset = _skip_name(reply, offset) + 4
    addresses = []
    for _ in range(ancount):
        offset = _skip_name(reply, offset)
        rtype, _, _, length = struct.unpack("!HHIH", reply[offset : offset + 10])
        offset += 10
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(reply[offset : offset + 4]))
        offset += length
    return addresses


def _skip_name(data: bytes, offset: int) -> int:
    while True:
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += length + 1


if __name__ == "__main__":
    found = query(sys.argv[1], sys.argv[2])
    if found is None:
        sys.exit(2)
    print("\n".join(found))
    sys.exit(0 if found else 1)
