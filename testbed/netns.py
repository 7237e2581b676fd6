"""Network namespaces made by a test and always removed: the only place network tests touch."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

NETNS_DIR = Path("/run/netns")


def unique_name(prefix: str) -> str:
    """A namespace or link name unlikely to clash with anything else on the machine."""
    return f"{prefix}{secrets.token_hex(3)}"


def ip(
    *args: str, netns: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(command, check=check, capture_output=True, text=True)


def in_netns(
    netns: str,
    *command: str,
    check: bool = True,
    timeout: float = 30,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `command` inside `netns` (`ip netns exec`), capturing its output."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, *command],
        check=check,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        input=input,
    )


@contextmanager
def network_namespace(prefix: str = "se-") -> Iterator[str]:
    """A fresh named netns with loopback up, deleted (with its links) on exit."""
    name = unique_name(prefix)
    ip("netns", "add", name)
    try:
        ip("link", "set", "lo", "up", netns=name)
        yield name
    finally:
        _kill_processes_in(name)
        ip("netns", "delete", name, check=False)


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def _kill_processes_in(name: str) -> None:
    # `ip netns pids` lists only processes whose netns is this one: ours by construction.
    result = ip("netns", "pids", name, check=False)
    for pid in result.stdout.split():
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
