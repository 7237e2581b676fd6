"""smarter-cni's agent: its memory (RSS and PSS) beside its import floor, on a typical gateway and
over 1,000 ADD/DEL pairs; and the suite's daemons together (device manager, CNI agent, dnsmasq).

The agent and `smarter-cni dns` (dnsmasq) run in a "node" network namespace made for the run,
with the plugin config a node gets (one bridge, pod names served by dnsmasq). Requests reach the
agent as the plugin hands them over (cni.client.forward: the same bytes on the same socket), so
only the agent's work is counted. A typical gateway: the agent serving a few pods
(TYPICAL_PODS). The import floor is a process importing exactly the modules the agent imported
(its `-X importtime` report), doing nothing. The daemons together: the three processes at once
beside a device manager on a typical gateway (bench.bench_device_plugin.typical_gateway), so that
the pages they share are divided among them in PSS.

Run: python -m bench cni_memory
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_cni import _process_in
from bench.fixtures import pod_namespaces
from bench.memory import Memory, import_floor, imported_modules, memory_of
from bench.report import Measurement

SUITE = "cni-agent"
REPO = Path(__file__).resolve().parents[1]
TYPICAL_PODS = 5
WARM_UP_PAIRS = 20
GROWTH_PAIRS = 1_000
# Issue 16: within 4 MB of the import floor on a typical gateway, no growth over 1,000 pairs.
ABOVE_FLOOR_MB = 4.0
GROWTH_LIMIT_MB = 1.0


def _conflist(state: Path) -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": "smarter",
        "plugins": [
            {
                "type": "smarter-cni",
                "stateDir": str(state / "smarter"),
                "dns": {"upstream": ["127.0.0.1#5399"]},
            }
        ],
    }


class _Requests:
    """ADD and DEL of pods, handed to the agent as the plugin hands them."""

    def __init__(self, conflist: dict[str, object], socket_path: Path) -> None:
        plugins = conflist["plugins"]
        assert isinstance(plugins, list)
        config = {**plugins[0], "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
        self.stdin = json.dumps(config).encode()
        self.socket_path = str(socket_path)

    def send(self, verb: str, pod_netns: str, container_id: str) -> None:
        from cni import client

        env = {
            "CNI_COMMAND": verb,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": f"/run/netns/{pod_netns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/usr/lib/cni",
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={container_id}",
        }
        status, output = client.forward(self.socket_path, env, self.stdin, timeout=60)
        if status != 0:
            raise RuntimeError(f"{verb} {container_id} failed: {output.decode(errors='replace')}")


def _dnsmasq_pid(launcher_pid: int) -> int:
    """`smarter-cni dns` execs dnsmasq (same pid) once its hosts directory is ready."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if Path(f"/proc/{launcher_pid}/comm").read_text().strip() == "dnsmasq":
            return launcher_pid
        time.sleep(0.05)
    raise RuntimeError("smarter-cni dns did not become dnsmasq")


def _measure(state: Path) -> dict[str, Memory | int]:
    from bench.bench_device_plugin import typical_gateway
    from testbed import kubelet as kubelet_module
    from testbed.netns import network_namespace

    conflist = _conflist(state)
    conflist_path = state / "10-smarter.conflist"
    conflist_path.write_text(json.dumps(conflist))
    socket_path = state / "smarter" / "agent.sock"
    report = state / "agent.log"
    requests = _Requests(conflist, socket_path)
    figures: dict[str, Memory | int] = {}
    with (
        pod_namespaces(TYPICAL_PODS + 1, "scmp-") as pods,
        network_namespace("scm-") as node,
        _process_in(
            node, sys.executable, "-X", "importtime", "-m", "cni", "--log-format", "json",
            "agent", "--conf", str(conflist_path),
            ready=socket_path.exists, log_path=report,
        ) as agent,
        _process_in(
            node, sys.executable, "-m", "cni", "dns", "--conf", str(conflist_path),
            ready=lambda: (state / "smarter").exists(),
        ) as dns,
    ):  # fmt: skip
        dnsmasq = _dnsmasq_pid(dns)
        for index, pod in enumerate(pods[:TYPICAL_PODS]):
            requests.send("ADD", pod, f"typical-{index}")
        time.sleep(0.5)
        figures["typical"] = memory_of(agent)
        with typical_gateway(state / "device-manager", kubelet_module) as (manager, _, _):
            figures["together agent"] = memory_of(agent)
            figures["together dnsmasq"] = memory_of(dnsmasq)
            figures["together device manager"] = memory_of(manager)
        growth_pod = pods[TYPICAL_PODS]
        for pair in range(WARM_UP_PAIRS + GROWTH_PAIRS):
            if pair == WARM_UP_PAIRS:
                figures["before pairs"] = memory_of(agent)
            requests.send("ADD", growth_pod, f"pair-{pair}")
            requests.send("DEL", growth_pod, f"pair-{pair}")
        figures["after pairs"] = memory_of(agent)
        for index, pod in enumerate(pods[:TYPICAL_PODS]):
            requests.send("DEL", pod, f"typical-{index}")
    modules = imported_modules(report.read_text(errors="replace"))
    figures["floor"] = import_floor(modules, cwd=REPO)
    figures["modules"] = len(modules)
    return figures


def _rows(figures: dict[str, Memory | int]) -> list[Measurement]:
    memory = {name: value for name, value in figures.items() if isinstance(value, Memory)}
    together = (
        memory["together agent"] + memory["together dnsmasq"] + memory["together device manager"]
    )
    rows = []
    for kind in ("rss", "pss"):
        name = kind.upper()

        def mb(figure: str, kind: str = kind) -> float:
            value = together if figure == "together" else memory[figure]
            return float(getattr(value, f"{kind}_mb"))

        floor, typical = mb("floor"), mb("typical")
        growths = [(name, mb("after pairs") - mb("before pairs"))]
        if kind == "pss":
            # The file-backed rest of PSS moves when other processes sharing the libraries
            # start or stop: the anonymous part is the agent's own.
            anonymous = mb("after pairs", "pss_anon") - mb("before pairs", "pss_anon")
            growths.append(("PSS (anonymous pages)", anonymous))
        rows += [
            Measurement(SUITE, f"{name} import floor (the agent's imports, nothing run)",
                        floor, "MB"),
            Measurement(
                SUITE, f"{name} on a typical gateway ({TYPICAL_PODS} pods)", typical, "MB",
                reference=floor,
                target=f"goal <= floor + {ABOVE_FLOOR_MB:g} MB ({typical - floor:+.1f}): "
                + ("met" if typical <= floor + ABOVE_FLOOR_MB else "NOT MET"),
            ),
            *_growth_rows(growths),
            Measurement(
                "daemons", f"{name} device manager + CNI agent + dnsmasq, typical gateway",
                mb("together"), "MB",
                target=f"device manager {mb('together device manager'):.1f}, agent"
                f" {mb('together agent'):.1f}, dnsmasq {mb('together dnsmasq'):.1f}",
            ),
        ]  # fmt: skip
    return rows


def _growth_rows(figures: list[tuple[str, float]]) -> list[Measurement]:
    """The growth rows over the ADD/DEL pairs, each with its verdict."""
    return [
        Measurement(
            SUITE, f"{label} growth over {GROWTH_PAIRS:,} ADD/DEL pairs", growth, "MB",
            target=f"goal no growth (<= {GROWTH_LIMIT_MB:g} MB): "
            + ("met" if growth <= GROWTH_LIMIT_MB else "NOT MET"),
        )
        for label, growth in figures
    ]  # fmt: skip


def run() -> list[Measurement]:
    sys.path.insert(0, str(REPO))
    state = Path(tempfile.mkdtemp(prefix="scnim-", dir="/tmp"))
    # dnsmasq runs as its own user: it must enter the state directory to read the hosts files.
    state.chmod(0o755)
    try:
        return _rows(_measure(state))
    finally:
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    from bench.report import render_table

    print(render_table(run()))
