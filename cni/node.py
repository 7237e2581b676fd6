"""The node's side of every command: what ADD, DEL, CHECK, STATUS and GC do.

The agent runs this for the plugin; when the agent is away the plugin runs it in-process.
Either way the state is on disk (leases, records) or in the kernel (links, routes, rules), so
the two paths agree and can take over from each other.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cni import masquerade, netlink
from cni.config import NetConf
from cni.dns_records import HostsDirectory
from cni.errors import CHECK_FAILED, INTERNAL_FAILURE, IO_FAILURE, NOT_AVAILABLE, CniError
from cni.ipam import LeaseStore
from cni.names import dns_safe_label
from cni.request import Request
from smarter_common.errors import LockBusyError
from smarter_common.hostroot import HostRoot
from smarter_common.locks import lock_current
from smarter_common.logs import LazyLogger


@dataclass
class WarmState:
    """What a long-running process already ensured for a network, so ADD can skip it."""

    bridge: netlink.Link | None = None
    masquerade_done: bool = False


class NodeNetwork:
    """One network on this node. Cheap to build; `warm` state only saves repeated checks."""

    def __init__(
        self,
        conf: NetConf,
        host_root: HostRoot | None = None,
        warm: WarmState | None = None,
        log: Any = None,
    ) -> None:
        self.conf = conf
        # In-process (the exec'd plugin): warnings only unless SMARTER_LOG_LEVEL asks for more,
        # and structlog (~55 ms) imported only if there is something to say.
        self.log = log if log is not None else LazyLogger("smarter-cni", default_level="warning")
        self.root = host_root or HostRoot()
        state = self.root.path(conf.state_dir)
        self.leases = LeaseStore(
            state / "leases", conf.range_start, conf.range_end, reserved=[conf.gateway]
        )
        self.hosts = HostsDirectory(self.root.path(conf.dns.hosts_dir), state / "dns.lock")
        self._masquerade_lock = state / "masquerade.lock"
        self._attachment_locks = state / "attachments"
        self.warm = warm or WarmState()

    @contextmanager
    def _attachment(self, host_name: str, *, removing: bool = False) -> Iterator[None]:
        """Hold the attachment's lock: one ADD or DEL of it at a time, across processes.

        The runtime never overlaps operations on one container, but the agent and the plugin
        can (an ADD the agent is still doing when the plugin gave up waiting, and the DEL the
        runtime sends next). The lock file is named after the host veth (a hash, so any
        ifname is safe in a path); DEL removes it, and whoever then finds it replaced retries.
        """
        path = self._attachment_locks / host_name
        try:
            self._attachment_locks.mkdir(parents=True, exist_ok=True)
            lock = lock_current(path)
        except OSError as error:
            # Only a guard against a rare overlap: no reason to fail a DEL (or ADD) on its own.
            self.log.warning("attachment_lock_unavailable", path=str(path), error=str(error))
            yield
            return
        try:
            yield
            if removing:
                path.unlink(missing_ok=True)
        finally:
            lock.release()

    # -- ADD -----------------------------------------------------------------------------------

    def add(self, request: Request) -> dict[str, Any]:
        log = self.log.bind(container_id=request.container_id, ifname=request.ifname)
        netns = str(self.root.path(request.netns))
        netlink.refuse_unusable_netns(netns)
        host_name = netlink.host_ifname(request.container_id, request.ifname)
        with self._attachment(host_name):
            address = self.leases.acquire(request.container_id, request.ifname)
            interface = ipaddress.IPv4Interface(f"{address}/{self.conf.subnet.prefixlen}")
            try:
                bridge, host, pod = self._plug(netns, host_name, request.ifname, interface, log)
                self._register(request, address, log)
            except BaseException:
                self._undo(request, host_name)
                raise
        log.info("added", address=str(interface), veth=host_name)
        return self._result(request, bridge, host, pod, interface)

    def _plug(
        self, netns: str, host_name: str, ifname: str, interface: ipaddress.IPv4Interface, log: Any
    ) -> tuple[netlink.Link, netlink.Link, netlink.Link]:
        """Bridge, rules and the veth pair; once more from scratch if the bridge known was stale."""
        remembered = self.warm.bridge is not None
        bridge = self.ensure_bridge()
        if self.conf.ip_masq:
            self.ensure_masquerade()

        def plug(bridge: netlink.Link) -> tuple[netlink.Link, netlink.Link]:
            return netlink.add_pod_interface(
                netns, host_name, ifname, bridge.index, interface, self.conf.gateway, self.conf.mtu
            )

        try:
            return (bridge, *plug(bridge))
        except CniError:
            if not remembered or netlink.link_index(self.conf.bridge) == bridge.index:
                raise
        # The bridge this process remembered is gone (deleted, or replaced by another process
        # under the same name). Whoever removed it may have flushed the rules too.
        log.warning("bridge_gone_recreating", bridge=self.conf.bridge, stale_index=bridge.index)
        self.forget_warm_state()
        bridge = self.ensure_bridge()
        if self.conf.ip_masq:
            self.ensure_masquerade()
        return (bridge, *plug(bridge))

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
                "name_not_registered",
                pod=pod,
                namespace=namespace,
                reason=_no_name(pod, namespace or "default"),
            )
        elif record.pod != pod:
            log.info("name_registered", pod=pod, names=list(record.names))

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
                self.log.warning("undo_step_failed", error=str(error))

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
        """Release veth, record and lease; anything already gone is not an error.

        Every step is tried even when one fails, so a DEL frees all it can; the first failure
        is reported afterwards (the runtime retries DEL until it succeeds). The one exception:
        while the veth could not be removed the pod may still hold its address, so the lease is
        kept until a retried DEL removes the veth; handing the address out would duplicate it.
        """
        host_name = netlink.host_ifname(request.container_id, request.ifname)
        log = self.log.bind(container_id=request.container_id, ifname=request.ifname)
        steps: list[tuple[str, Callable[[], object]]] = [
            ("veth", lambda: netlink.delete_link(host_name)),
            ("DNS record", lambda: self.hosts.remove(request.container_id, request.ifname)),
            ("address lease", lambda: self.leases.release(request.container_id, request.ifname)),
        ]
        done: dict[str, object] = {}
        failures: list[tuple[str, Exception]] = []
        lease_kept = False
        with self._attachment(host_name, removing=True):
            for what, step in steps:
                if what == "address lease" and any(f == "veth" for f, _ in failures):
                    log.warning("lease_kept", reason="the veth may still hold the address")
                    lease_kept = True
                    continue
                try:
                    done[what] = step()
                except Exception as error:
                    log.warning("delete_step_failed", step=what, error=str(error))
                    failures.append((what, error))
        released = done.get("address lease")
        log.info(
            "deleted" if not failures else "deleted_partly",
            veth=host_name if done.get("veth") else None,
            record=done.get("DNS record"),
            released=[str(a) for a in released] if isinstance(released, list) else None,
            failed=[what for what, _ in failures] or None,
        )
        if failures:
            raise _first_failure(failures, lease_kept=lease_kept)

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
        record = self.hosts.read(request.container_id) if request.pod_name else None
        if request.pod_name and record is None:
            from cni.dns_records import names_for

            claimed = {name for other in self.hosts.records() for name in other.names}
            if names_for(request.pod_name, request.pod_namespace or "default", claimed):
                problems.append(f"DNS record for {request.pod_name} is missing")
        elif record is not None and leased is not None and record.address != leased:
            problems.append(
                f"DNS record for {request.pod_name} points at {record.address},"
                f" not the leased {leased}"
            )
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
        self._collect_attachment_locks(expected)
        self.log.info(
            "collected",
            leases=[str(lease.address) for lease in stale],
            records=removed_records,
            links=removed_links,
            valid=len(valid_ids),
        )

    def _collect_attachment_locks(self, expected: set[str]) -> None:
        try:
            names = os.listdir(self._attachment_locks)
        except FileNotFoundError:
            return
        for name in names:
            if name in expected:
                continue
            path = self._attachment_locks / name
            try:
                lock = lock_current(path, timeout=0)
            except LockBusyError:
                continue  # an ADD or DEL of it is running now: not stale
            try:
                path.unlink(missing_ok=True)
            finally:
                lock.release()


def _no_name(pod: str, namespace: str) -> str:
    """Why a pod got no DNS name, for the operator."""
    for what, name in (("pod name", pod), ("namespace", namespace)):
        if dns_safe_label(name) is None:
            return (
                f"the {what} {name!r} has no DNS-safe form"
                " (an RFC 1123 label once lower-cased, with '_' as '-')"
            )
    return f"its DNS-safe form {dns_safe_label(pod)!r} is another pod's name"


def _first_failure(failures: list[tuple[str, Exception]], *, lease_kept: bool) -> CniError:
    what, error = failures[0]
    if isinstance(error, CniError):
        return error
    others = [other for other, _ in failures[1:]]
    if others:
        rest = f"; nor the {', '.join(others)}"
    elif lease_kept:
        rest = "; the address lease is kept until a DEL removes the veth"
    else:
        rest = "; the rest was released"
    return CniError(
        IO_FAILURE if isinstance(error, OSError) else INTERNAL_FAILURE,
        f"DEL could not remove the {what}",
        f"{type(error).__name__}: {error}{rest}",
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
