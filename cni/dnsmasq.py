"""The dnsmasq that serves the pod records: its exact command line, and running it.

dnsmasq follows `--hostsdir` by inotify (new, changed and removed files), so records appear
and vanish with no signal. It answers on the gateway address only; `--bind-dynamic` lets it
start before the bridge has its address and rebind if the bridge is recreated.
"""

from __future__ import annotations

import os

from cni.config import NetConf
from smarter_common.hostroot import HostRoot

DNSMASQ = "/usr/sbin/dnsmasq"


def argv(conf: NetConf, *, binary: str = DNSMASQ, host_root: HostRoot | None = None) -> list[str]:
    """dnsmasq's argv for `conf`: foreground, no config file, the records and upstreams only."""
    root = host_root or HostRoot()
    command = [
        binary,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--log-facility=-",
        "--no-hosts",
        f"--hostsdir={root.path(conf.dns.hosts_dir)}",
        f"--listen-address={conf.gateway}",
        "--bind-dynamic",
        f"--domain={conf.dns.domain}",
        "--expand-hosts",
        f"--local=/{conf.dns.domain}/",
        "--domain-needed",
    ]
    if conf.dns.upstream:
        command.append("--no-resolv")
        command.extend(f"--server={server}" for server in conf.dns.upstream)
    else:
        command.append(f"--resolv-file={root.path('/etc/resolv.conf')}")
    return command


def exec_dnsmasq(command: list[str]) -> None:
    """Replace this process with dnsmasq (the DaemonSet's container runs it as PID 1)."""
    os.execv(command[0], command)
