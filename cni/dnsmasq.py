"""The dnsmasq that serves the pod records: its exact command line, and running it.

dnsmasq follows `--hostsdir` by inotify (new, changed and removed files), so records appear
and vanish with no signal. It answers on the gateway address only; `--bind-dynamic` lets it
start before the bridge has its address and rebind if the bridge is recreated.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

from cni.config import NetConf
from smarter_common.hostroot import HostRoot

DNSMASQ = "/usr/sbin/dnsmasq"
# Who dnsmasq becomes once it has bound its port (its compiled-in defaults, Debian's too; we
# pass no --user): it reads the hosts directory as them, and only logs when it cannot.
DNSMASQ_USER = "nobody"
DNSMASQ_GROUP = "dip"


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


def unreadable_for_dnsmasq(directory: Path) -> Path | None:
    """The first directory on the way to `directory` that dnsmasq's user cannot enter or read.

    None when it can, or when dnsmasq will not change user (we are not root) or cannot (its
    user is unknown here, which dnsmasq reports itself). Tried for real, in a child that
    becomes that user, so ACLs and group membership count as the kernel counts them.
    """
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(DNSMASQ_USER)
    except KeyError:
        return None
    try:
        gid = grp.getgrnam(DNSMASQ_GROUP).gr_gid
    except KeyError:
        gid = user.pw_gid
    chain = [*reversed(directory.parents), directory]
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(user.pw_uid)
            blocked = next((d for d in chain if not os.access(d, os.X_OK)), None)
            if blocked is None and not os.access(directory, os.R_OK):
                blocked = directory
            os.write(writer, os.fsencode(blocked or ""))
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as stream:
        answer = stream.read()
    os.waitpid(pid, 0)
    return Path(os.fsdecode(answer)) if answer else None
