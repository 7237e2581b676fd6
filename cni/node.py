"""The node's side of every command: what ADD, DEL, CHECK, STATUS and GC do.

The agent runs this for the plugin; when the agent is away the plugin runs it in-process.
Either way the state is on disk (leases, records) or in the kernel (links, routes, rules), so
the two paths agree and can take over from each other.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cni import masquerade, netlink
from cni.config import NetConf
from cni.dns_records import HostsDirectory
from cni.errors import CHECK_FAILED, NOT_AVAILABLE, CniError
from cni.ipam import LeaseStore
from cni.request import Request
from smarter_common.hostroot import HostRoot


class QuietLog:
    """The exec'd plugin's logger: importing structlog would cost every exec ~55 ms.

    Warnings and errors always go through smarter_common.logs (to stderr: stdout carries the
    result); info only when SMARTER_LOG_LEVEL asks for it.
    """

    def __init__(self, **context: Any) -> None:
        self._context = context

    def bind(self, **context: Any) -> QuietLog:
        return QuietLog(**self._context, **context)

    def info(self, event: str, **fields: Any) -> None:
        if os.environ.get("SMARTER_LOG_LEVEL", "").lower() in ("debug", "info"):
            self._real().info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._real().warning(event, **fields)

    def _real(self) -> Any:
        from smarter_common import logs

        logs.configure()
        return logs.get_logger("smarter-cni", **self._context)


@dataclass
class WarmState:
    """What a long-running process already ensured for a network, so ADD can skip it."""

    bridge: netlink.Link | None = None
    masquerade_done: bool = False


class Node:
    """One network on this node. Cheap to build; `warm` state only saves repeated checks."""

    def __init__(
        self,
        conf: NetConf,
        host_root: HostRoot | None = None,
        warm: WarmState | None = None,
        log: Any = None,
    ) -> None:
        self.conf = conf
        self.log = log if log is not None else QuietLog()
        self.root = host_root or HostRoot.from_env()
        state = self.root.path(conf.state_dir)
        self.leases = LeaseStore(
            state / "leases", conf.range_start, conf.range_end, reserved=[conf.gateway]
        )
        self.hosts = HostsDirectory(self.root.path(conf.dns.hosts_dir), state / "dns.lock")
        self._masquerade_lock = state / "masquerade.lock"
        self.warm = warm or WarmState()

    # -- ADD -----------------------------------------------------------------------------------

    def add(self, request: Request) -> dict[str, Any]:
        log = self.log.bind(container_id=request.container_id, ifname=request.ifname)
        netns = str(self.root.path(request.netns))
        netlink.refuse_own_netns(netns)
        address = self.leases.acquire(request.container_id, request.ifname)
        interface = ipaddress.IPv4Interface(f"{address}/{self.conf.subnet.prefixlen}")
        host_name = netlink.host_ifname(request.container_id, request.ifname)
        try:
            bridge = self.ensure_bridge()
            if self.conf.ip_masq:
                self.ensure_masquerade()
            host, pod = netlink.add_pod_interface(
                netns,
                host_name,
                request.ifname,
                bridge.index,
                interface,
                self.conf.gateway,
                self.conf.mtu,
            )
            self._register(request, address, log)
        except BaseException:
            self._undo(request, host_name)
            raise
        log.info("added", address=str(interface), veth=host_name)
        return self._result(request, bridge, host, pod, interface)

    def ensure_bridge(self) -> netlink.Link:
        bridge = self.warm.bridge
        if bridge is None:
            bridge = netlink.ensure_bridge(
                self.conf.bridge, self.conf.gateway_interface, self.conf.mtu
            )
            self.warm.bridge = bridge
        return bridge

    def ensure_masquerade(self) -> None:
        if not self.warm.masquerade_done:
            masquerade.ensure(self.conf.subnet, self._masquerade_lock)
            self.warm.masquerade_done = True

    def forget_warm_state(self) -> None:
        """Re-check bridge and rules on the next ADD (after something failed)."""
        self.warm.bridge = None
        self.warm.masquerade_done = False

    def _register(self, request: Request, address: ipaddress.IPv4Address, log: Any) -> None:
        pod, namespace = request.pod_name, request.pod_namespace
        if not pod:
            return
        record = self.hosts.register(
            request.container_id, request.ifname, address, pod, namespace or "default"
        )
        if record is None:
            log.warning(
                "name not registered",
                pod=pod,
                namespace=namespace,
                reason="not an RFC 1123 label",
            )

    def _undo(self, request: Request, host_name: str) -> None:
        self.forget_warm_state()
        for step in (
            lambda: netlink.delete_link(host_name),
            lambda: self.hosts.remove(request.container_id, request.ifname),
            lambda: self.leases.release(request.container_id, request.ifname),
        ):
            try:
                step()
            except Exception as error:
                self.log.warning("undo step failed", error=str(error))

    def _result(
        self,
        request: Request,
        bridge: netlink.Link,
        host: netlink.Link,
        pod: netlink.Link,
        interface: ipaddress.IPv4Interface,
    ) -> dict[str, Any]:
        version = self.conf.cni_version
        ip: dict[str, Any] = {
            "address": str(interface),
            "gateway": str(self.conf.gateway),
            "interface": 2,
        }
        if version == "0.4.0":
            ip["version"] = "4"
        dns: dict[str, Any] = {
            "nameservers": list(self.conf.dns.nameservers),
            "domain": self.conf.dns.domain,
            "search": list(self.conf.dns.search),
        }
        if self.conf.dns.options:
            dns["options"] = list(self.conf.dns.options)
        return {
            "cniVersion": version,
            "interfaces": [
                {"name": bridge.name, "mac": bridge.mac},
                {"name": host.name, "mac": host.mac},
                {"name": pod.name, "mac": pod.mac, "sandbox": request.netns},
            ],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": str(self.conf.gateway)}],
            "dns": dns,
        }

    # -- DEL -----------------------------------------------------------------------------------

    def delete(self, request: Request) -> None:
        """Release lease, record and veth; anything already gone is not an error."""
        host_name = netlink.host_ifname(request.container_id, request.ifname)
        deleted = netlink.delete_link(host_name)
        record = self.hosts.remove(request.container_id, request.ifname)
        released = self.leases.release(request.container_id, request.ifname)
        self.log.info(
            "deleted",
            container_id=request.container_id,
            ifname=request.ifname,
            veth=host_name if deleted else None,
            record=record,
            released=[str(a) for a in released],
        )

    # -- CHECK ---------------------------------------------------------------------------------

    def check(self, request: Request) -> None:
        problems = self.problems(request)
        if problems:
            raise CniError(
                CHECK_FAILED, "network of the container is not as ADD left it", "; ".join(problems)
            )

    def problems(self, request: Request) -> list[str]:
        """What is wrong with the attachment, in words; empty if nothing."""
        conf = self.conf
        problems: list[str] = []
        prev = conf.prev_result or {}
        leased = self.leases.find(request.container_id, request.ifname)
        expected = _address_in(prev) or (
            ipaddress.IPv4Interface(f"{leased}/{conf.subnet.prefixlen}") if leased else None
        )
        if leased is None:
            problems.append("no address lease")
        elif expected is not None and expected.ip != leased:
            problems.append(f"leased address {leased} differs from prevResult {expected}")
        host_name = netlink.host_ifname(request.container_id, request.ifname)
        exists, master = netlink.link_master(host_name)
        if not exists:
            problems.append(f"host interface {host_name} is missing")
        elif master is None or master != netlink.link_index(conf.bridge):
            problems.append(f"host interface {host_name} is not on bridge {conf.bridge}")
        pod = netlink.pod_interface(str(self.root.path(request.netns)), request.ifname)
        if pod is None:
            problems.append(f"interface {request.ifname} is missing in {request.netns}")
        else:
            if not pod.up:
                problems.append(f"interface {request.ifname} is down")
            if expected is not None and expected not in pod.addresses:
                problems.append(f"address {expected} is missing on {request.ifname}")
            if conf.gateway not in pod.default_gateways:
                problems.append(f"default route via {conf.gateway} is missing")
        if request.pod_name and self.hosts.read(request.container_id) is None:
            from cni.dns_records import names_for

            if names_for(request.pod_name, request.pod_namespace or "default", ()):
                problems.append(f"DNS record for {request.pod_name} is missing")
        if conf.ip_masq and not masquerade.is_present(conf.subnet):
            problems.append(f"masquerade rules for {conf.subnet} are missing")
        return problems

    # -- STATUS --------------------------------------------------------------------------------

    def status(self) -> None:
        problems = []
        for what, directory in (
            ("hosts directory", self.hosts.path),
            ("lease directory", self.leases.directory),
        ):
            problem = _unusable_directory(directory)
            if problem:
                problems.append(f"{what} {directory}: {problem}")
        bridge = netlink.bridge_problem(self.conf.bridge)
        if bridge:
            problems.append(bridge)
        if problems:
            raise CniError(NOT_AVAILABLE, "smarter-cni cannot add pods", "; ".join(problems))

    # -- GC ------------------------------------------------------------------------------------

    def gc(self, valid: frozenset[tuple[str, str]]) -> None:
        """Remove leases, records and veths of every attachment not in `valid`."""
        stale = self.leases.release_all_but(valid)
        valid_ids = {container_id for container_id, _ in valid}
        removed_records = [
            record.container_id
            for record in self.hosts.records()
            if (record.container_id, record.ifname) not in valid
            and self.hosts.remove(record.container_id)
        ]
        expected = {netlink.host_ifname(c, i) for c, i in valid}
        bridge = netlink.link_index(self.conf.bridge)
        # Only veths on this network's bridge: another network's are not ours to judge.
        removed_links = [
            name
            for name in netlink.links_named(netlink.HOST_IFNAME_PREFIX)
            if name not in expected
            and bridge is not None
            and netlink.link_master(name)[1] == bridge
            and netlink.delete_link(name)
        ]
        self.log.info(
            "collected",
            leases=[str(lease.address) for lease in stale],
            records=removed_records,
            links=removed_links,
            valid=len(valid_ids),
        )


def _address_in(result: dict[str, Any]) -> ipaddress.IPv4Interface | None:
    for ip in result.get("ips", []) if isinstance(result.get("ips"), list) else []:
        try:
            return ipaddress.IPv4Interface(ip["address"])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def _unusable_directory(directory: Path) -> str | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return error.strerror or str(error)
    if not os.access(directory, os.W_OK | os.X_OK):
        return "not writable"
    return None
