"""Netlink work lands in the namespace it is meant for, and nowhere else.

Node-side calls of cni.netlink run in a process inside a node netns the test creates (`ip netns
exec`), never in the test's own namespace, which is the machine's.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.netns import ip, netns_path
from tests.cni.harness import GATEWAY, PYTHON, REPO, AgentMode, Node, node, pods

pytestmark = [pytest.mark.netns]

@pytest.fixture
def cni_node() -> Iterator[Node]:
    with node(mtu=1400) as made:
        yield made


def _machine() -> tuple[str, str]:
    """Links and addresses of the test's own namespace: the machine's."""
    return ip("-br", "link").stdout, ip("-br", "addr").stdout


def _links(netns: str) -> dict[str, dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(ip("-j", "-d", "link", "show", netns=netns).stdout)
    return {link["ifname"]: link for link in listed}


def _addresses(netns: str, ifname: str) -> list[str]:
    listed: list[dict[str, Any]] = json.loads(ip("-j", "addr", "show", ifname, netns=netns).stdout)
    return [
        f"{info['local']}/{info['prefixlen']}"
        for link in listed
        for info in link["addr_info"]
        if info["family"] == "inet"
    ]


def _run_in(netns: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, PYTHON, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_add_sets_mtu_macs_address_and_route_on_both_ends(cni_node: Node, mode: AgentMode) -> None:
    with mode(cni_node), pods(1) as (pod,):
        outcome = cni_node.add_pod(pod, "shape-1", "shape-7xk2p")
        assert outcome.returncode == 0, outcome
        bridge, host, inside = outcome.json["interfaces"]
        node_links, pod_links = _links(cni_node.netns), _links(pod)
        address = outcome.json["ips"][0]["address"]
        routes = ip("route", "show", "default", netns=pod).stdout
        pod_addresses = _addresses(pod, "eth0")
        bridge_addresses = _addresses(cni_node.netns, "smarter0")
    assert bridge["mac"] == "02:5c:0a:d2:00:01"
    assert node_links["smarter0"]["address"] == bridge["mac"]
    assert node_links["smarter0"]["mtu"] == 1400
    assert bridge_addresses == [f"{GATEWAY}/16"]
    veth = node_links[host["name"]]
    assert (veth["address"], veth["mtu"], veth["master"]) == (host["mac"], 1400, "smarter0")
    assert veth["linkinfo"]["info_kind"] == "veth" and "UP" in veth["flags"]
    eth0 = pod_links["eth0"]
    assert (eth0["address"], eth0["mtu"]) == (inside["mac"], 1400)
    assert eth0["linkinfo"]["info_kind"] == "veth" and "UP" in eth0["flags"]
    assert pod_addresses == [address]
    assert routes.split()[:5] == ["default", "via", GATEWAY, "dev", "eth0"]


def test_add_check_del_leave_the_machines_namespace_untouched(
    cni_node: Node, mode: AgentMode
) -> None:
    before = _machine()
    with mode(cni_node), pods(1) as (pod,):
        added = cni_node.add_pod(pod, "quiet-1", "quiet-7xk2p")
        assert added.returncode == 0, added
        assert _machine() == before
        deleted = cni_node.del_pod("quiet-1", pod)
        assert deleted.returncode == 0, deleted
    assert _machine() == before


def test_add_into_the_nodes_own_netns_is_refused_with_code_4_and_changes_nothing(
    cni_node: Node, mode: AgentMode
) -> None:
    with mode(cni_node):
        links_before = _links(cni_node.netns)
        addresses_before = ip("-br", "addr", netns=cni_node.netns).stdout
        outcome = cni_node.cni(
            "ADD",
            container_id="own-ns",
            netns=netns_path(cni_node.netns),
            args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=own-7xk2p",
        )
        assert outcome.returncode == 1
        assert outcome.json["code"] == 4
        assert outcome.json["msg"] == "CNI_NETNS is the node's own network namespace"
        assert _links(cni_node.netns).keys() == links_before.keys()
        assert ip("-br", "addr", netns=cni_node.netns).stdout == addresses_before
    assert cni_node.leases() == [] and cni_node.records() == []


def test_pod_side_changes_reach_the_pod_namespace_only(cni_node: Node) -> None:
    with pods(1) as (pod,):
        outcome = _run_in(
            cni_node.netns,
            f"""
            from cni import netlink
            netlink.in_pod({netns_path(pod)!r}, lambda ipr: ipr.addr(
                "add", index=ipr.link_lookup(ifname="lo")[0], address="10.250.0.9", prefixlen=32))
            """,
        )
        assert outcome.returncode == 0, outcome.stderr
        assert "10.250.0.9/32" in _addresses(pod, "lo")
    assert "10.250.0.9" not in ip("-br", "addr", netns=cni_node.netns).stdout
    assert "10.250.0.9" not in _machine()[1]


def test_pod_side_iproute_called_from_a_node_thread_fails_instead_of_opening_a_node_socket(
    cni_node: Node,
) -> None:
    with pods(1) as (pod,):
        outcome = _run_in(
            cni_node.netns,
            f"""
            from concurrent.futures import ThreadPoolExecutor
            from cni import netlink

            node_thread = ThreadPoolExecutor(max_workers=1)
            node_thread.submit(lambda: None).result()  # started here, in the node's netns

            def stray(ipr):
                return node_thread.submit(lambda: ipr.addr(
                    "add", index=1, address="10.250.0.7", prefixlen=32)).exception()

            print(type(netlink.in_pod({netns_path(pod)!r}, stray)).__name__)
            """,
        )
        assert outcome.returncode == 0, outcome.stderr
        assert outcome.stdout.strip() == "RuntimeError"
        assert "10.250.0.7" not in ip("-br", "addr", netns=pod).stdout
    assert "10.250.0.7" not in ip("-br", "addr", netns=cni_node.netns).stdout
    assert "10.250.0.7" not in _machine()[1]


def test_in_netns_refuses_a_path_that_is_not_a_network_namespace(cni_node: Node) -> None:
    outcome = _run_in(
        cni_node.netns,
        """
        from cni import netlink
        try:
            netlink.in_pod("/etc/hostname", lambda ipr: ipr.addr(
                "add", index=1, address="10.250.0.8", prefixlen=32))
        except OSError as error:
            print(error.errno)
        """,
    )
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout.strip() == "22"  # EINVAL from setns(2)
    assert "10.250.0.8" not in ip("-br", "addr", netns=cni_node.netns).stdout


@pytest.mark.parametrize(
    ("code", "cni_code"),
    [(errno.EBUSY, 11), (errno.EAGAIN, 11), (errno.EPERM, 101), (errno.EINVAL, 101)],
)
def test_kernel_busy_is_try_again_later_and_a_refusal_is_setup_failed(
    code: int, cni_code: int
) -> None:
    from pyroute2 import NetlinkError

    from cni.netlink import _setup_failed

    error = _setup_failed("cannot create veth scni0", NetlinkError(code, os.strerror(code)))
    assert (error.code, error.msg) == (cni_code, "cannot create veth scni0")


@pytest.mark.parametrize(
    ("returncode", "stderr", "transient"),
    [
        (4, "Another app is currently holding the xtables lock. Stopped waiting after 5s.\n", True),
        (1, "iptables: Resource temporarily unavailable.\n", True),
        (1, "iptables v1.8.9 (nf_tables): Device or resource busy\n", True),
        (1, "iptables: No chain/target/match by that name.\n", False),
        (2, 'iptables v1.8.9 (nf_tables): unknown option "--bogus"\n', False),
        (0, "", False),
    ],
)
def test_iptables_busy_is_told_apart_from_iptables_refusing(
    returncode: int, stderr: str, transient: bool
) -> None:
    from cni.masquerade import is_transient_failure

    assert is_transient_failure(returncode, stderr) is transient
