"""What a simulated gateway shows from outside: its cores, its programs' logs, and what pods
may leave behind (leases, DNS records, runc state, firmware files, veths, locks, mounts, QEMU).

Each reader takes the gateway's paths and looks; none of them changes anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from sim.mounts import mounts_under
from smarter_common.procfs import pids_with
from smarter_common.remoteproc import IDLE_STATES, firmware_dir, snapshot_cores
from testbed.bringup import ip
from testbed.layout import GatewayPaths
from testbed.processes import read_lines


def core_states(paths: GatewayPaths) -> dict[str, str]:
    """remoteprocN -> state, read from the simulated host's sysfs; `unreadable: <why>` for a
    core whose state cannot be read, so that a report shows it instead of failing."""
    return {core.device_id: core.state for core in snapshot_cores(paths.host)}


def log_of(paths: GatewayPaths, program: str) -> str:
    """The output of a program the gateway started (`smarter-cni-agent`, `containerd`...)."""
    return "\n".join(read_lines(paths.logs / f"{program}.log"))


def leases(paths: GatewayPaths) -> list[str]:
    """Addresses smarter-cni has leased (one file per address)."""
    state = paths.node.path(paths.netconf().state_dir)
    return [p.name for p in visible_files(state / "leases")]


def dns_records(paths: GatewayPaths) -> list[str]:
    """Container IDs with a hosts record in the directory dnsmasq serves."""
    return [p.name for p in visible_files(paths.node.path(paths.netconf().dns.hosts_dir))]


def firmware_records(paths: GatewayPaths) -> list[str]:
    """Container IDs the hybrid runtime keeps a firmware record for (under runc's --root)."""
    return [p.name for p in visible_files(paths.firmware_records)]


def runc_containers(paths: GatewayPaths) -> list[str]:
    """Container IDs runc keeps state for under the shim's --root."""
    records = paths.firmware_records.name
    return [p.name for p in visible_files(paths.runc_state) if p.name != records]


def firmware_copies(paths: GatewayPaths) -> list[Path]:
    """Firmware files the runtime placed for its containers where remoteproc loads them."""
    from runtime_handler.firmware_commands import FIRMWARE_PREFIX

    directory = firmware_dir(paths.host)
    return sorted(directory.glob(f"{FIRMWARE_PREFIX}*")) if directory.is_dir() else []


def qemu_pids(paths: GatewayPaths) -> list[int]:
    """QEMU processes running this gateway's cores."""
    return pids_with(b"qemu-system", str(paths.sim_root).encode())


def runtime_executables(paths: GatewayPaths) -> dict[int, str]:
    """PID -> interpreter of each running process of the hybrid runtime's zipapp."""
    found: dict[int, str] = {}
    for pid in pids_with(b"", str(paths.runtime).encode()):
        try:
            found[pid] = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
    return found


def leftovers(paths: GatewayPaths) -> list[str]:
    """Everything pods may leave behind that is still here, except sandboxes containerd still
    knows (the caller asks CRI); empty once all pods are gone."""
    from smarter_common.locks import is_locked

    found: list[str] = []
    found.extend(f"address lease {address}" for address in leases(paths))
    found.extend(f"DNS record {container}" for container in dns_records(paths))
    veths = ip(paths.netns, "-o", "link", "show", "type", "veth", check=False).stdout.strip()
    found.extend(f"veth {line.split(':')[1].strip()}" for line in veths.splitlines() if line)
    for run in (paths.node.run, paths.host.run):
        if run.is_dir():
            found.extend(f"held lock {p}" for p in sorted(run.rglob("*.lock")) if is_locked(p))
    found.extend(f"runc state {container}" for container in runc_containers(paths))
    found.extend(f"firmware record {container}" for container in firmware_records(paths))
    found.extend(f"firmware file {path}" for path in firmware_copies(paths))
    for name, state in core_states(paths).items():
        if state not in IDLE_STATES:
            found.append(f"core {name} is {state}")
    found.extend(f"QEMU process {pid}" for pid in qemu_pids(paths))
    found.extend(f"mount {p}" for p in mounts_under(paths.containerd.state))
    return found


def visible_files(directory: Path) -> list[Path]:
    """The entries of `directory` not hidden by a leading dot; none if it does not exist."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))
