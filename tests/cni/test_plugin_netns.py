"""smarter-cni exec'd as a runtime does, in a node netns of its own, with real pods and dnsmasq."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cni.client import ANSWER_TIMEOUT_ENV
from cni.netlink import host_ifname
from smarter_common.locks import FileLock
from testbed.netns import in_netns, ip, netns_path, network_namespace
from tests.cni.harness import (
    GATEWAY,
    PYTHON,
    AgentMode,
    Node,
    agent,
    dnsmasq,
    node,
    pods,
    runtime_config,
)

pytestmark = [pytest.mark.netns]

@pytest.fixture
def cni_node() -> Iterator[Node]:
    with node() as made:
        yield made


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def _pod_links(pod: str) -> list[str]:
    out = ip("-o", "link", "show", netns=pod).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def _address(outcome_json: dict[str, Any]) -> str:
    address: str = outcome_json["ips"][0]["address"].split("/")[0]
    return address


def test_two_pods_on_the_bridge_ping_each_other(cni_node: Node, mode: AgentMode) -> None:
    with mode(cni_node), pods(2) as (a, b):
        first = cni_node.add_pod(a, "ping-a", "alpha-7xk2p")
        second = cni_node.add_pod(b, "ping-b", "beta-9zq4m")
        assert first.returncode == 0, first
        assert second.returncode == 0, second
        address_b = _address(second.json)
        assert address_b != _address(first.json)
        ping = in_netns(a, "/bin/busybox", "ping", "-c", "2", "-W", "2", address_b, check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        routes = in_netns(a, "ip", "route", "show", "default").stdout
        assert f"default via {GATEWAY} dev eth0" in routes


def test_add_result_describes_bridge_veth_and_pod_interface(cni_node: Node) -> None:
    with pods(1) as (pod,):
        outcome = cni_node.add_pod(pod, "result-1", "sensor-7xk2p")
        assert outcome.returncode == 0, outcome
        result = outcome.json
    bridge, host, inside = result["interfaces"]
    assert result["cniVersion"] == "1.0.0"
    assert bridge["name"] == "smarter0"
    assert host["name"].startswith("scni") and "sandbox" not in host
    assert inside == {"name": "eth0", "mac": inside["mac"], "sandbox": netns_path(pod)}
    assert result["ips"] == [
        {"address": result["ips"][0]["address"], "gateway": GATEWAY, "interface": 2}
    ]
    assert result["ips"][0]["address"].endswith("/16")
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}]
    assert result["dns"]["nameservers"] == [GATEWAY]
    assert result["dns"]["search"] == ["smarter.internal"]
    # One masquerade rule set for the subnet, in the node's namespace.
    rules = in_netns(cni_node.netns, "iptables", "-t", "nat", "-S").stdout
    assert "-A POSTROUTING -s 10.210.0.0/16" in rules and "-j SMARTER-CNI" in rules
    assert "-A SMARTER-CNI -d 10.210.0.0/16 -j RETURN" in rules
    assert "-A SMARTER-CNI -j MASQUERADE" in rules


def test_pod_resolves_another_by_pod_name_namespace_and_app_until_del(
    cni_node: Node, mode: AgentMode
) -> None:
    with mode(cni_node), dnsmasq(cni_node), pods(2) as (a, b):
        assert cni_node.add_pod(a, "dns-a", "client-5d4f8b7c9d-x7k2p", "apps").returncode == 0
        added = cni_node.add_pod(b, "dns-b", "sensor-7xk2p", "iot")
        assert added.returncode == 0, added
        address_b = _address(added.json)
        for name in ("sensor-7xk2p", "sensor-7xk2p.iot", "sensor", "sensor.smarter.internal"):
            assert _eventually(_resolves_to(cni_node, name, a, [address_b])), name
        # A host-network process (the node netns) asks the same server at the gateway address.
        assert cni_node.resolve("sensor", from_netns=cni_node.netns) == [address_b]
        assert cni_node.resolve("client") == [_address(cni_node_result(cni_node, "dns-a"))]

        assert cni_node.del_pod("dns-b", b).returncode == 0
        # Plain names are ours alone (NXDOMAIN); a dotted one goes upstream, which here is
        # a dead address in the node netns, so it is not answered at all.
        for name in ("sensor-7xk2p", "sensor"):
            assert _eventually(_resolves_to(cni_node, name, a, [])), name
        assert not cni_node.resolve("sensor-7xk2p.iot", from_netns=a)


def _resolves_to(cni_node: Node, name: str, netns: str, expected: list[str]) -> Callable[[], bool]:
    return lambda: cni_node.resolve(name, from_netns=netns) == expected


def cni_node_result(cni_node: Node, container_id: str) -> dict[str, Any]:
    record = (cni_node.hosts_dir / container_id).read_text().splitlines()[1]
    return {"ips": [{"address": record.split()[0] + "/16"}]}


def test_app_name_goes_only_to_the_first_pod_that_claims_it(cni_node: Node) -> None:
    with pods(2) as (a, b):
        assert cni_node.add_pod(a, "app-1", "sensor-7xk2p").returncode == 0
        assert cni_node.add_pod(b, "app-2", "sensor-b2c4d").returncode == 0
    first = (cni_node.hosts_dir / "app-1").read_text().splitlines()[1].split()[1:]
    second = (cni_node.hosts_dir / "app-2").read_text().splitlines()[1].split()[1:]
    assert first == ["sensor-7xk2p", "sensor-7xk2p.default", "sensor"]
    assert second == ["sensor-b2c4d", "sensor-b2c4d.default"]


def test_pod_name_that_is_not_a_dns_label_gets_network_but_no_record(cni_node: Node) -> None:
    with pods(1) as (pod,):
        outcome = cni_node.add_pod(pod, "dotted", "my.pod")
        assert outcome.returncode == 0, outcome
        assert cni_node.records() == []
        assert "name_not_registered" in outcome.stderr
        assert cni_node.leases() == [_address(outcome.json)]


def test_container_names_from_podman_get_network_and_their_dns_safe_name(
    cni_node: Node, mode: AgentMode
) -> None:
    # podman passes `IgnoreUnknown=1;K8S_POD_NAME=<container name>` and no namespace.
    with mode(cni_node), pods(3) as (a, b, c):
        added = [
            cni_node.cni(
                "ADD", container_id=cid, netns=netns_path(pod),
                args=f"IgnoreUnknown=1;K8S_POD_NAME={name}",
            )
            for cid, pod, name in (("c1", a, "focused_cray"), ("c2", b, "Web_1"),
                                   ("c3", c, "web_1"))
        ]  # fmt: skip
        assert [outcome.returncode for outcome in added] == [0, 0, 0], added
        assert _names_in(cni_node, "c1") == ["focused-cray", "focused-cray.default"]
        assert _names_in(cni_node, "c2") == ["web-1", "web-1.default"]
        # `web_1` would be `web-1` too: ambiguous, so no name, and the operator is told why.
        assert cni_node.records() == ["c1", "c2"]
        if mode is not agent:  # the agent logs it in its own log
            assert "its DNS-safe form 'web-1' is another pod's name" in added[2].stderr
        for cid, pod in (("c1", a), ("c2", b), ("c3", c)):
            assert cni_node.del_pod(cid, pod).returncode == 0
        assert (cni_node.leases(), cni_node.records()) == ([], [])


def _names_in(cni_node: Node, container_id: str) -> list[str]:
    return (cni_node.hosts_dir / container_id).read_text().splitlines()[1].split()[1:]


@pytest.mark.parametrize("count", [24])
def test_concurrent_adds_get_distinct_addresses(
    cni_node: Node, mode: AgentMode, count: int
) -> None:
    with mode(cni_node), pods(count) as namespaces, ThreadPoolExecutor(count) as pool:
        outcomes = list(
            pool.map(
                lambda item: cni_node.add_pod(item[1], f"conc-{item[0]}", f"app{item[0]}-0"),
                enumerate(namespaces),
            )
        )
        assert all(o.returncode == 0 for o in outcomes), [o for o in outcomes if o.returncode]
        addresses = [_address(o.json) for o in outcomes]
        assert len(set(addresses)) == count
        assert sorted(cni_node.leases()) == sorted(addresses)
        assert len(cni_node.records()) == count
        bridge_links = [link for link in cni_node.links() if link.startswith("scni")]
        assert len(bridge_links) == count


def test_del_twice_is_not_an_error(cni_node: Node, mode: AgentMode) -> None:
    with mode(cni_node), pods(1) as (pod,):
        assert cni_node.add_pod(pod, "twice", "twice-7xk2p").returncode == 0
        first = cni_node.del_pod("twice", pod)
        second = cni_node.del_pod("twice", pod)
        assert (first.returncode, first.stdout) == (0, "")
        assert (second.returncode, second.stdout) == (0, "")
        assert cni_node.leases() == [] and cni_node.records() == []
        assert _pod_links(pod) == ["lo"]
        assert [link for link in cni_node.links() if link.startswith("scni")] == []


def test_del_of_an_unknown_container_succeeds(cni_node: Node, mode: AgentMode) -> None:
    with mode(cni_node):
        outcome = cni_node.del_pod("never-added")
        assert (outcome.returncode, outcome.stdout) == (0, "")


def test_del_after_the_netns_is_gone_releases_lease_and_record(
    cni_node: Node, mode: AgentMode
) -> None:
    with mode(cni_node):
        with network_namespace("scp-") as pod:
            assert cni_node.add_pod(pod, "gone", "gone-7xk2p").returncode == 0
            path = netns_path(pod)
        outcome = cni_node.cni("DEL", container_id="gone", netns=path)
        assert (outcome.returncode, outcome.stdout) == (0, ""), outcome
        assert cni_node.leases() == [] and cni_node.records() == []
        assert [link for link in cni_node.links() if link.startswith("scni")] == []


def test_gc_removes_what_belongs_to_containers_not_in_the_valid_list(
    cni_node: Node, mode: AgentMode
) -> None:
    with mode(cni_node), pods(3) as (a, b, c):
        kept = cni_node.add_pod(a, "keep", "keep-7xk2p")
        assert kept.returncode == 0
        assert cni_node.add_pod(b, "drop-1", "drop-7xk2p").returncode == 0
        assert cni_node.add_pod(c, "drop-2", "drop-b2c4d").returncode == 0
        config = runtime_config(cni_node.conflist, cniVersion="1.1.0")
        config["cni.dev/valid-attachments"] = [{"containerID": "keep", "ifname": "eth0"}]
        outcome = cni_node.cni("GC", config, ifname=None)
        assert (outcome.returncode, outcome.stdout) == (0, ""), outcome
        assert cni_node.leases() == [_address(kept.json)]
        assert cni_node.records() == ["keep"]
        assert [link for link in cni_node.links() if link.startswith("scni")] == [
            kept.json["interfaces"][1]["name"]
        ]
        assert _pod_links(b) == ["lo"] and _pod_links(a) == ["lo", "eth0"]


def test_check_passes_after_add_and_reports_a_removed_route(
    cni_node: Node, mode: AgentMode
) -> None:
    with mode(cni_node), pods(1) as (pod,):
        added = cni_node.add_pod(pod, "checked", "checked-7xk2p")
        assert added.returncode == 0
        config = runtime_config(cni_node.conflist, prevResult=added.json)
        args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=checked-7xk2p"
        check = cni_node.cni(
            "CHECK", config, container_id="checked", netns=netns_path(pod), args=args
        )
        assert (check.returncode, check.stdout) == (0, ""), check

        ip("route", "del", "default", netns=pod)
        (cni_node.hosts_dir / "checked").unlink()
        check = cni_node.cni(
            "CHECK", config, container_id="checked", netns=netns_path(pod), args=args
        )
        assert check.returncode != 0
        error = check.json
        assert error["code"] == 102
        assert f"default route via {GATEWAY} is missing" in error["details"]
        assert "DNS record for checked-7xk2p is missing" in error["details"]


def test_status_succeeds_on_a_usable_node(cni_node: Node, mode: AgentMode) -> None:
    config = runtime_config(cni_node.conflist, cniVersion="1.1.0")
    with mode(cni_node):
        outcome = cni_node.cni("STATUS", config, ifname=None)
    assert (outcome.returncode, outcome.stdout) == (0, ""), outcome


def test_status_is_50_when_the_hosts_directory_cannot_be_used(cni_node: Node) -> None:
    blocker = cni_node.state / "not-a-dir"
    blocker.write_text("")
    cni_node.conflist["plugins"][0]["dns"]["hostsDir"] = str(blocker / "hosts")
    config = runtime_config(cni_node.conflist, cniVersion="1.1.0")
    outcome = cni_node.cni("STATUS", config, ifname=None)
    assert outcome.returncode == 1
    assert outcome.json["code"] == 50
    assert str(blocker / "hosts") in outcome.json["details"]


def test_status_is_50_when_the_bridge_name_is_taken_by_another_kind_of_link(
    cni_node: Node,
) -> None:
    ip("link", "add", "smarter0", "type", "ifb", netns=cni_node.netns)
    config = runtime_config(cni_node.conflist, cniVersion="1.1.0")
    outcome = cni_node.cni("STATUS", config, ifname=None)
    assert outcome.returncode == 1
    assert outcome.json["code"] == 50
    assert "smarter0 exists but is a ifb link, not a bridge" in outcome.json["details"]


def _assert_nothing_left(cni_node: Node, pod: str) -> None:
    assert cni_node.leases() == []
    assert cni_node.records() == []
    assert [link for link in cni_node.links() if link != "lo" and link != "smarter0"] == []
    assert _pod_links(pod) == ["lo"]


@pytest.mark.parametrize(
    ("change", "code", "mentions"),
    [
        ({"subnet": "10.210.0.0/33"}, 7, "subnet"),
        ({"subnet": "not-a-network"}, 7, "subnet"),
        ({"gateway": "192.168.1.1"}, 7, "gateway"),
        ({"mtu": 70000}, 7, "mtu"),
        ({"ipam": {"type": "host-local"}}, 2, "ipam="),
        ({"dns": {"upstream": ["dns.example"]}}, 7, "dns.upstream"),
    ],
)
def test_invalid_config_is_refused_with_its_code_and_leaves_nothing(
    cni_node: Node, change: dict[str, Any], code: int, mentions: str
) -> None:
    cni_node.conflist["plugins"][0].update(change)
    with pods(1) as (pod,):
        outcome = cni_node.add_pod(pod, "bad-config", "bad-7xk2p")
        assert outcome.returncode == 1
        error = outcome.json
        assert error["code"] == code, error
        assert mentions in error["msg"] + error.get("details", "")
        _assert_nothing_left(cni_node, pod)


def test_unsupported_cni_version_is_refused_with_code_1(cni_node: Node) -> None:
    cni_node.conflist["cniVersion"] = "0.3.1"
    with pods(1) as (pod,):
        outcome = cni_node.add_pod(pod, "old", "old-7xk2p")
        assert (outcome.returncode, outcome.json["code"]) == (1, 1)
        _assert_nothing_left(cni_node, pod)


@pytest.mark.parametrize(
    ("pod_name", "mentions"),
    [("evil\nname", "K8S_POD_NAME"), ("../../etc/passwd", "K8S_POD_NAME")],
)
def test_invalid_pod_name_is_refused_with_code_4_and_leaves_nothing(
    cni_node: Node, mode: AgentMode, pod_name: str, mentions: str
) -> None:
    with mode(cni_node), pods(1) as (pod,):
        outcome = cni_node.add_pod(pod, "bad-name", pod_name)
        assert outcome.returncode == 1
        assert outcome.json["code"] == 4
        assert mentions in outcome.json["details"]
        _assert_nothing_left(cni_node, pod)
        assert not list(cni_node.state.rglob("*passwd*"))


def test_missing_netns_is_refused_with_code_4_and_leaves_nothing(
    cni_node: Node, mode: AgentMode
) -> None:
    with mode(cni_node), pods(1) as (pod,):
        missing = cni_node.cni(
            "ADD", container_id="no-ns", netns="/run/netns/scn-does-not-exist", args=""
        )
        unset = cni_node.cni("ADD", container_id="no-ns")
        for outcome in (missing, unset):
            assert outcome.returncode == 1
            assert outcome.json["code"] == 4
            assert "CNI_NETNS" in outcome.json["msg"] + outcome.json.get("details", "")
        _assert_nothing_left(cni_node, pod)


def test_netns_that_is_a_regular_file_is_code_4_before_anything_is_made(
    cni_node: Node, mode: AgentMode, tmp_path: Path
) -> None:
    not_a_netns = tmp_path / "netns"
    not_a_netns.write_text("")
    with mode(cni_node):
        outcome = cni_node.cni("ADD", container_id="file-ns", netns=str(not_a_netns), args=None)
    assert (outcome.returncode, outcome.json["code"]) == (1, 4), outcome
    assert outcome.json["msg"] == "CNI_NETNS is not a network namespace"
    assert outcome.json["details"].startswith(f"{not_a_netns} is a regular file")
    assert cni_node.leases() == []
    assert [link for link in cni_node.links() if link.startswith("scni")] == []


def test_existing_interface_in_the_pod_is_an_error_and_leaves_nothing_of_ours(
    cni_node: Node,
) -> None:
    with pods(1) as (pod,):
        ip("link", "add", "eth0", "type", "ifb", netns=pod)
        outcome = cni_node.add_pod(pod, "clash", "clash-7xk2p")
        assert outcome.returncode == 1
        assert "eth0 already exists" in outcome.json["msg"]
        assert cni_node.leases() == [] and cni_node.records() == []
        assert [link for link in cni_node.links() if link.startswith("scni")] == []


def test_agent_down_gives_the_same_result_as_agent_up(cni_node: Node) -> None:
    with pods(2) as (a, b):
        with agent(cni_node) as running:
            served = cni_node.add_pod(a, "via-agent", "one-7xk2p")
            assert running.added() == ["via-agent"]  # the agent did the work, once
        alone = cni_node.add_pod(b, "in-process", "two-7xk2p", env={"SMARTER_LOG_LEVEL": "info"})
        assert served.returncode == 0 and alone.returncode == 0

        def shape(result: dict[str, Any]) -> dict[str, Any]:
            copy: dict[str, Any] = json.loads(json.dumps(result))
            for interface in copy["interfaces"]:
                interface.pop("mac")
                interface.pop("sandbox", None)
            copy["interfaces"][1].pop("name")
            copy["ips"][0].pop("address")
            return copy

        assert shape(served.json) == shape(alone.json)
        assert '"event": "added"' in alone.stderr  # no agent: the plugin did it itself
        # And each side undoes what the other did.
        with agent(cni_node) as running:
            assert cni_node.del_pod("in-process", b).returncode == 0
            assert running.answered() == [("DEL", "in-process")]
        assert cni_node.del_pod("via-agent", a).returncode == 0
        _assert_nothing_left(cni_node, a)


def test_console_script_is_the_same_plugin(cni_node: Node) -> None:
    script = str(Path(PYTHON).with_name("smarter-cni"))
    with pods(1) as (pod,):
        outcome = cni_node.add_pod(pod, "script", "script-7xk2p", plugin=[script])
        assert outcome.returncode == 0, outcome
        assert cni_node.leases() == [_address(outcome.json)]


def test_host_root_set_for_the_runtime_does_not_move_the_plugin(
    cni_node: Node, mode: AgentMode
) -> None:
    # containerd execs every plugin and runtime with its own environment: a SMARTER_HOST_ROOT
    # meant for smarter-hybrid-runtime reaches smarter-cni too.
    runtime_env = {"SMARTER_HOST_ROOT": str(cni_node.state / "simulated-gateway")}
    with mode(cni_node), pods(1) as (pod,):
        outcome = cni_node.add_pod(pod, "beside-runtime", "web-7xk2p", env=runtime_env)
        assert outcome.returncode == 0, outcome
        assert cni_node.leases() == [_address(outcome.json)]
        assert cni_node.del_pod("beside-runtime", pod, env=runtime_env).returncode == 0
        _assert_nothing_left(cni_node, pod)


def test_settings_file_beside_the_execd_symlink_gives_the_plugin_its_host_root(
    cni_node: Node, tmp_path: Path
) -> None:
    root = tmp_path / "host"
    (root / "run/netns").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "smarter-cni").symlink_to(Path(PYTHON).with_name("smarter-cni"))
    (bin_dir / "smarter-cni.conf").write_text(f"SMARTER_CNI_HOST_ROOT={root}\n")
    config = runtime_config(cni_node.conflist, stateDir="/state")
    with pods(1) as (pod,):
        (root / "run/netns" / pod).symlink_to(netns_path(pod))
        args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=rooted-7xk2p"
        added = cni_node.cni(
            "ADD", config, container_id="rooted", netns=netns_path(pod), args=args,
            plugin=[str(bin_dir / "smarter-cni")],
        )  # fmt: skip
        assert added.returncode == 0, added
        assert _leases_in(root / "state/leases") == [_address(added.json)]
        assert cni_node.leases() == []
        assert (root / "state/hosts/rooted").is_file()
        deleted = cni_node.cni(
            "DEL", config, container_id="rooted", netns=netns_path(pod),
            plugin=[str(bin_dir / "smarter-cni")],
        )  # fmt: skip
        assert deleted.returncode == 0, deleted
        assert _leases_in(root / "state/leases") == []


def _leases_in(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def test_version_lists_the_supported_spec_versions(cni_node: Node) -> None:
    outcome = cni_node.cni("VERSION", {"cniVersion": "1.1.0"}, ifname=None)
    assert outcome.returncode == 0
    assert outcome.json == {
        "cniVersion": "1.1.0",
        "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"],
    }


def test_result_is_a_valid_prev_result_for_portmap_and_the_host_port_answers(
    cni_node: Node,
) -> None:
    cni_node.conflist["plugins"].append(
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
    )
    mappings = {"portMappings": [{"hostPort": 18080, "containerPort": 8000, "protocol": "tcp"}]}
    portmap = runtime_config(cni_node.conflist, 1)
    portmap.pop("capabilities")
    portmap["runtimeConfig"] = mappings
    with pods(1) as (pod,):
        added = cni_node.add_pod(pod, "mapped", "web-7xk2p")
        assert added.returncode == 0, added
        chained = cni_node.add_pod(
            pod,
            "mapped",
            "web-7xk2p",
            config={**portmap, "prevResult": added.json},
            plugin=["/usr/lib/cni/portmap"],
        )
        assert chained.returncode == 0, chained
        assert chained.json["ips"] == added.json["ips"]
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                pod,
                "/bin/busybox",
                "nc",
                "-l",
                "-p",
                "8000",
                "-e",
                "/bin/busybox",
                "echo",
                "hello from the pod",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            def answers() -> bool:
                reply = in_netns(
                    cni_node.netns,
                    "/bin/busybox",
                    "nc",
                    "-w",
                    "2",
                    GATEWAY,
                    "18080",
                    check=False,
                    input="",
                )
                return "hello from the pod" in reply.stdout

            assert _eventually(answers, timeout=10)
        finally:
            server.kill()
            server.wait()
        deleted = cni_node.cni(
            "DEL",
            {**portmap, "prevResult": chained.json},
            container_id="mapped",
            netns=netns_path(pod),
            plugin=["/usr/lib/cni/portmap"],
        )
        assert deleted.returncode == 0, deleted
        assert cni_node.del_pod("mapped", pod).returncode == 0


def test_result_is_a_valid_prev_result_for_tuning_and_bandwidth(cni_node: Node) -> None:
    with pods(1) as (pod,):
        added = cni_node.add_pod(pod, "tuned", "tuned-7xk2p")
        assert added.returncode == 0
        previous = added.json
        for plugin, extra in (
            ("tuning", {"sysctl": {"net.core.somaxconn": "512"}}),
            ("bandwidth", {"ingressRate": 8000000, "ingressBurst": 80000}),
        ):
            config = {
                "cniVersion": "1.0.0",
                "name": "smarter",
                "type": plugin,
                **extra,
                "prevResult": previous,
            }
            outcome = cni_node.add_pod(
                pod, "tuned", "tuned-7xk2p", config=config, plugin=[f"/usr/lib/cni/{plugin}"]
            )
            assert outcome.returncode == 0, (plugin, outcome)
            previous = outcome.json
        assert in_netns(pod, "cat", "/proc/sys/net/core/somaxconn").stdout.strip() == "512"


def test_agent_killed_outright_leaves_a_dead_socket_that_the_plugin_works_around(
    cni_node: Node,
) -> None:
    socket_path = cni_node.state / "agent.sock"
    with agent(cni_node, serves_every_call=False) as running:
        os.kill(running.process.pid, signal.SIGKILL)
        running.process.wait()
        assert socket_path.exists()  # nobody listens on it any more
        with pods(1) as (pod,):
            outcome = cni_node.add_pod(pod, "orphaned", "orphaned-7xk2p")
            assert outcome.returncode == 0, outcome
            assert cni_node.leases() == [_address(outcome.json)]


def test_agent_stopped_by_sigterm_removes_its_socket(cni_node: Node) -> None:
    socket_path = cni_node.state / "agent.sock"
    with agent(cni_node) as running:
        assert socket_path.exists()
        running.process.terminate()
        assert running.process.wait(timeout=10) == 0
    assert not socket_path.exists()


def test_add_replaces_a_host_veth_left_by_an_add_that_died_half_way(cni_node: Node) -> None:
    leftover = host_ifname("half-done", "eth0")
    ip("link", "add", leftover, "type", "ifb", netns=cni_node.netns)
    with pods(1) as (pod,):
        outcome = cni_node.add_pod(pod, "half-done", "half-7xk2p")
        assert outcome.returncode == 0, outcome
        assert outcome.json["interfaces"][1]["name"] == leftover
        kind = ip("-d", "link", "show", leftover, netns=cni_node.netns).stdout
        assert "veth" in kind


def test_agent_mode_notices_work_the_plugin_did_in_process(cni_node: Node) -> None:
    with (
        pytest.raises(AssertionError, match="done in-process, not by the agent"),
        agent(cni_node),
        pods(1) as (pod,),
    ):
        (cni_node.state / "agent.sock").unlink()  # the plugin can no longer reach the agent
        assert cni_node.add_pod(pod, "bypass", "bypass-7xk2p").returncode == 0


def test_agent_timeout_is_code_11_and_the_plugin_does_not_redo_the_work(cni_node: Node) -> None:
    cni_node.leases_dir.mkdir(parents=True)
    busy = FileLock(cni_node.leases_dir / ".lock")  # the agent's ADD will wait on it
    with agent(cni_node) as running, pods(1) as (pod,):
        busy.acquire()
        try:
            env = {ANSWER_TIMEOUT_ENV: "1", "SMARTER_LOG_LEVEL": "info"}
            outcome = cni_node.add_pod(pod, "slow", "slow-7xk2p", env=env)
            # Answered while the lock is still held: the plugin did not start the ADD itself.
            assert outcome.returncode == 1, outcome
            assert outcome.json["code"] == 11
            assert "within 1s" in outcome.json["details"]
            assert cni_node.leases() == []
        finally:
            busy.release()
        # The agent finishes the ADD it was given, and it alone did it, once.
        assert _eventually(lambda: running.added() == ["slow"], timeout=20), running.events()
        assert '"event": "added"' not in outcome.stderr
        assert len(cni_node.leases()) == 1
        assert [link for link in cni_node.links() if link.startswith("scni")] == [
            host_ifname("slow", "eth0")
        ]
        assert _pod_links(pod) == ["lo", "eth0"]
        # The runtime's DEL after the failed ADD releases it all.
        assert cni_node.del_pod("slow", pod).returncode == 0
        _assert_nothing_left(cni_node, pod)


def test_del_that_arrives_while_the_agent_is_still_adding_waits_for_it_and_leaves_nothing(
    cni_node: Node,
) -> None:
    cni_node.leases_dir.mkdir(parents=True)
    busy = FileLock(cni_node.leases_dir / ".lock")
    with agent(cni_node), pods(1) as (pod,), ThreadPoolExecutor(1) as pool:
        busy.acquire()
        try:
            added = cni_node.add_pod(pod, "racing", "racing-7xk2p", env={ANSWER_TIMEOUT_ENV: "1"})
            assert added.json["code"] == 11
            deleting = pool.submit(cni_node.del_pod, "racing", pod)
            time.sleep(0.5)  # the DEL is at the agent, beside the ADD still in progress
        finally:
            busy.release()
        deleted = deleting.result(timeout=60)
        assert (deleted.returncode, deleted.stdout) == (0, ""), deleted
        _assert_nothing_left(cni_node, pod)


def test_app_name_resolves_to_the_oldest_remaining_pod_after_its_holder_is_deleted(
    cni_node: Node,
) -> None:
    with agent(cni_node), dnsmasq(cni_node), pods(4) as (client, *sensors):
        assert cni_node.add_pod(client, "client", "client-5d4f8b7c9d-x7k2p").returncode == 0
        addresses = []
        for index, (pod, name) in enumerate(zip(sensors, ["7xk2p", "b2c4d", "x9z8w"], strict=True)):
            added = cni_node.add_pod(pod, f"sensor-{index}", f"sensor-{name}", "iot")
            assert added.returncode == 0, added
            addresses.append(_address(added.json))
        assert _eventually(_resolves_to(cni_node, "sensor", client, addresses[:1]))
        assert cni_node.del_pod("sensor-0", sensors[0]).returncode == 0
        assert _eventually(_resolves_to(cni_node, "sensor", client, addresses[1:2]))
        assert cni_node.del_pod("sensor-1", sensors[1]).returncode == 0
        assert _eventually(_resolves_to(cni_node, "sensor", client, addresses[2:3]))
        assert cni_node.resolve("sensor-x9z8w.iot", from_netns=client) == addresses[2:3]


def test_del_releases_lease_and_veth_even_when_the_record_cannot_be_removed(
    cni_node: Node, mode: AgentMode
) -> None:
    with mode(cni_node), pods(1) as (pod,):
        assert cni_node.add_pod(pod, "partly", "partly-7xk2p").returncode == 0
        dns_lock = cni_node.state / "dns.lock"
        dns_lock.unlink()
        dns_lock.mkdir()  # now the record cannot be removed: its lock cannot be opened
        outcome = cni_node.del_pod("partly", pod)
        assert outcome.returncode == 1
        assert outcome.json["code"] == 5
        assert outcome.json["msg"] == "DEL could not remove the DNS record"
        assert "the rest was released" in outcome.json["details"]
        assert cni_node.leases() == []
        assert [link for link in cni_node.links() if link.startswith("scni")] == []
        assert _pod_links(pod) == ["lo"]
        assert cni_node.records() == ["partly"]
        # The runtime retries DEL; once the record can go, it goes.
        dns_lock.rmdir()
        again = cni_node.del_pod("partly", pod)
        assert (again.returncode, again.stdout) == (0, ""), again
        _assert_nothing_left(cni_node, pod)


# The plugin in-process, with the kernel refusing to delete any link.
_VETH_REMOVAL_REFUSED = """
import errno, sys
from cni import netlink, plugin

def refuse(name):
    raise OSError(errno.EPERM, "Operation not permitted")

netlink.delete_link = refuse
sys.exit(plugin.run())
"""


def test_del_keeps_the_lease_while_the_veth_cannot_be_removed(cni_node: Node) -> None:
    with pods(1) as (pod,):
        assert cni_node.add_pod(pod, "stuck", "stuck-7xk2p").returncode == 0
        leased = cni_node.leases()
        refused = cni_node.del_pod("stuck", pod, plugin=[PYTHON, "-c", _VETH_REMOVAL_REFUSED])
        assert refused.returncode == 1, refused
        assert refused.json["code"] == 5
        assert refused.json["msg"] == "DEL could not remove the veth"
        assert refused.json["details"] == (
            "PermissionError: [Errno 1] Operation not permitted;"
            " the address lease is kept until a DEL removes the veth"
        )
        # The pod may still answer on its address: nobody else may be given it yet.
        assert cni_node.leases() == leased
        assert cni_node.records() == []
        again = cni_node.del_pod("stuck", pod)
        assert (again.returncode, again.stdout) == (0, ""), again
        _assert_nothing_left(cni_node, pod)


def test_check_reports_a_dns_record_that_points_away_from_the_lease(cni_node: Node) -> None:
    with pods(1) as (pod,):
        added = cni_node.add_pod(pod, "moved", "moved-7xk2p")
        assert added.returncode == 0
        leased = _address(added.json)
        record = cni_node.hosts_dir / "moved"
        record.write_text(record.read_text().replace(f"{leased} ", "10.210.0.250 "))
        config = runtime_config(cni_node.conflist, prevResult=added.json)
        check = cni_node.cni(
            "CHECK",
            config,
            container_id="moved",
            netns=netns_path(pod),
            args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=moved-7xk2p",
        )
        assert check.returncode == 1
        assert check.json["code"] == 102
        assert check.json["details"] == (
            f"DNS record for moved-7xk2p points at 10.210.0.250, not the leased {leased}"
        )


def test_agent_recreates_a_deleted_bridge_and_its_masquerade_rules_on_the_next_add(
    cni_node: Node,
) -> None:
    with agent(cni_node) as running, pods(2) as (a, b):
        assert cni_node.add_pod(a, "before", "before-7xk2p").returncode == 0
        # Someone removes the bridge and flushes the NAT table under the running agent.
        ip("link", "del", "smarter0", netns=cni_node.netns)
        for flush in (["-F", "POSTROUTING"], ["-F", "SMARTER-CNI"], ["-X", "SMARTER-CNI"]):
            in_netns(cni_node.netns, "iptables", "-t", "nat", *flush)
        after = cni_node.add_pod(b, "after", "after-7xk2p")
        assert after.returncode == 0, (after, running.events()[-3:])
        assert running.added() == ["before", "after"]
        bridge = ip("-br", "addr", "show", "smarter0", netns=cni_node.netns).stdout
        assert f"{GATEWAY}/16" in bridge
        assert after.json["interfaces"][0]["mac"] == "02:5c:0a:d2:00:01"
        rules = in_netns(cni_node.netns, "iptables", "-t", "nat", "-S").stdout
        assert "-A POSTROUTING -s 10.210.0.0/16" in rules
        assert "-A SMARTER-CNI -j MASQUERADE" in rules
        ping = in_netns(b, "/bin/busybox", "ping", "-c", "1", "-W", "2", GATEWAY, check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr


def test_iptables_lock_timeout_is_code_11_and_leaves_nothing(
    cni_node: Node, tmp_path: Path
) -> None:
    # An iptables that finds the xtables lock held past its -w wait, as iptables-legacy says it.
    fake = tmp_path / "bin" / "iptables"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'Another app is currently holding the xtables lock. Stopped waiting after 5s.' >&2\n"
        "exit 4\n"
    )
    fake.chmod(0o755)
    path = f"{fake.parent}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    with pods(1) as (pod,):
        outcome = cni_node.add_pod(pod, "locked", "locked-7xk2p", env={"PATH": path})
        assert outcome.returncode == 1
        assert outcome.json["code"] == 11, outcome.json
        assert outcome.json["msg"] == "iptables is busy"
        assert "xtables lock" in outcome.json["details"]
        _assert_nothing_left(cni_node, pod)
