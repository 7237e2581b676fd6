"""smarter-cni beside the reference chain bridge + host-local + dnsname, in throwaway netns.

Everything runs inside a "node" network namespace made for the run: the plugins, the agent,
both dnsmasqs, and one fresh pod namespace per pod. A driver process inside the node netns
execs each plugin exactly as a runtime would and times it, so `ip netns exec` is not counted.

Measured: ADD and DEL latency (min/median/p95 over PODS pods) for smarter-cni with its agent
up, in both shipped forms (the zipapp run by the host's python3, and the bundle with its own
interpreter, scripts/build_bundle.py, built for the run's directory as its prefix), with the
agent down (the plugin does the work itself), and for the reference chain; the
time from ADD's return until the pod's name resolves; and CONCURRENT simultaneous ADDs. The
agent's log counts the ADDs it did itself, so "agent up" is known not to hide in-process runs.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.fixtures import build_bundle, pod_namespaces
from bench.report import Measurement, Summary
from testbed.processes import terminate

SUITE = "cni"
PODS = 30
CONCURRENT = 50
REPO = Path(__file__).resolve().parents[1]
REFERENCE_PLUGINS = Path("/usr/lib/cni")
# What containerd runs plugins with on a node: the zipapp's `env python3` is the system's.
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DNSNAME_STATE = Path("/run/containers/cni/dnsname")
OURS_GATEWAY = "10.210.0.1"
REFERENCE_GATEWAY = "10.211.0.1"


# -- the driver, inside the node netns -----------------------------------------------------------


def _exec_plugin(
    command: list[str], verb: str, config: dict[str, Any], pod: str, container_id: str, name: str
) -> tuple[float, dict[str, Any] | None]:
    env = {
        "PATH": NODE_PATH,
        "CNI_COMMAND": verb,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": f"/run/netns/{pod}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(REFERENCE_PLUGINS),
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={name}",
    }
    started = time.perf_counter()
    result = subprocess.run(
        command, input=json.dumps(config), capture_output=True, text=True, env=env, cwd=REPO
    )
    elapsed = (time.perf_counter() - started) * 1000
    if result.returncode != 0:
        raise RuntimeError(f"{verb} {command[-1]} failed: {result.stdout} {result.stderr}")
    return elapsed, json.loads(result.stdout) if result.stdout.strip() else None


class _Chain:
    """A conflist run the way libcni runs it: ADD in order, DEL in reverse, prevResult passed."""

    def __init__(self, conflist: dict[str, Any], commands: list[list[str]]) -> None:
        self.configs = [
            {**plugin, "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
            for plugin in conflist["plugins"]
        ]
        self.commands = commands
        self.results: dict[str, dict[str, Any]] = {}

    def add(self, pod: str, container_id: str, name: str) -> tuple[float, str]:
        total, previous = 0.0, None
        for config, command in zip(self.configs, self.commands, strict=True):
            step = dict(config) if previous is None else {**config, "prevResult": previous}
            elapsed, previous = _exec_plugin(command, "ADD", step, pod, container_id, name)
            total += elapsed
        assert previous is not None
        self.results[container_id] = previous
        return total, previous["ips"][0]["address"].split("/")[0]

    def delete(self, pod: str, container_id: str, name: str) -> float:
        total = 0.0
        result = self.results.pop(container_id)
        for config, command in reversed(list(zip(self.configs, self.commands, strict=True))):
            step = {**config, "prevResult": result}
            total += _exec_plugin(command, "DEL", step, pod, container_id, name)[0]
        return total


def _resolves(server: str, name: str, address: str, timeout: float = 5.0) -> float | None:
    """Milliseconds until `name` resolves to `address` at `server`; None if it never does."""
    from testbed.dnsquery import query

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if query(server, name, timeout=0.5) == [address]:
            return (time.perf_counter() - started) * 1000
        time.sleep(0.001)
    return None


def drive(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one series (inside the node netns); the samples, as JSON-able data."""
    chain = _Chain(spec["conflist"], spec["commands"])
    pods, gateway, tag = spec["pods"], spec["gateway"], spec["tag"]
    samples: dict[str, Any] = {"add": [], "del": [], "resolve": [], "unresolved": 0}
    if spec.get("concurrent"):
        return _drive_concurrently(chain, pods, tag, gateway)
    for index, pod in enumerate(pods):
        name = f"{tag}{index}-7xk2p"
        elapsed, address = chain.add(pod, f"{tag}-{index}", name)
        samples["add"].append(elapsed)
        if spec.get("resolve"):
            waited = _resolves(gateway, name, address)
            if waited is None:
                samples["unresolved"] += 1
            else:
                samples["resolve"].append(waited)
    for index, pod in enumerate(pods):
        samples["del"].append(chain.delete(pod, f"{tag}-{index}", f"{tag}{index}-7xk2p"))
    return samples


def _drive_concurrently(chain: _Chain, pods: list[str], tag: str, gateway: str) -> dict[str, Any]:
    names = [f"{tag}{index}-7xk2p" for index in range(len(pods))]
    started = time.perf_counter()
    with ThreadPoolExecutor(len(pods)) as pool:
        added = list(
            pool.map(lambda i: chain.add(pods[i], f"{tag}-{i}", names[i]), range(len(pods)))
        )
    wall = (time.perf_counter() - started) * 1000
    addresses = [address for _, address in added]
    resolved = sum(
        _resolves(gateway, name, address) is not None
        for name, address in zip(names, addresses, strict=True)
    )
    with ThreadPoolExecutor(len(pods)) as pool:
        list(pool.map(lambda i: chain.delete(pods[i], f"{tag}-{i}", names[i]), range(len(pods))))
    return {
        "wall": wall,
        "add": [elapsed for elapsed, _ in added],
        "distinct": len(set(addresses)),
        "resolved": resolved,
    }


# -- the harness, outside ------------------------------------------------------------------------


@contextmanager
def _process_in(
    netns: str, *command: str, ready: Any, log_path: Path | None = None
) -> Iterator[int]:
    """A process in `netns` (`ip netns exec` execs it: same PID), killed by PID afterwards."""
    with open(log_path, "w+b") if log_path else tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns, *command], stdout=log, stderr=log, cwd=REPO
        )
        try:
            deadline = time.monotonic() + 30
            while not ready():
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"{command[3:]} did not start: {output}")
                time.sleep(0.05)
            yield process.pid
        finally:
            terminate(process)


def _series(node: str, spec: dict[str, Any]) -> dict[str, Any]:
    # Pod namespaces are made out here: one made inside `ip netns exec` lives in that
    # command's private mount namespace, where the agent could not see it.
    with pod_namespaces(spec["pods"], "scbp-") as pods:
        return _run_driver(node, {**spec, "pods": pods})


def _run_driver(node: str, spec: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run(
        ["ip", "netns", "exec", node, sys.executable, "-m", "bench.bench_cni", "--drive"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"series {spec['tag']} failed: {result.stderr[-3000:]}")
    samples: dict[str, Any] = json.loads(result.stdout)
    return samples


def _timings(
    label: str, ours: list[float], reference: list[float] | None, target: str = ""
) -> list[Measurement]:
    mine = Summary.of(ours)
    theirs = Summary.of(reference) if reference else None
    verdict = target
    if target and theirs is not None and mine.median > theirs.median:
        verdict = f"{target}: NOT MET"
    return [
        Measurement(
            SUITE,
            f"{label} {stat}",
            getattr(mine, stat),
            "ms",
            None if theirs is None else getattr(theirs, stat),
            verdict if stat == "median" else "",
        )
        for stat in ("minimum", "median", "p95")
    ]


def run() -> list[Measurement]:
    from testbed.netns import network_namespace

    state = Path(tempfile.mkdtemp(prefix="scnib-", dir="/tmp"))
    state.chmod(0o755)
    reference_name = f"scnib{secrets.token_hex(3)}"
    ours_conflist = {
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
    conflist_path = state / "10-smarter.conflist"
    conflist_path.write_text(json.dumps(ours_conflist))
    agent_log = state / "agent.log"
    reference_conflist = {
        "cniVersion": "1.0.0",
        "name": reference_name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "refbr0",
                "isGateway": True,
                "ipMasq": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.211.0.0/16", "gateway": REFERENCE_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(state / "host-local"),
                },
            },
            {"type": "dnsname", "domainName": "bench.internal"},
        ],
    }
    ours = _plugin_command(state)
    bundled = _bundle_command(state)
    reference = [str(REFERENCE_PLUGINS / "bridge"), str(REFERENCE_PLUGINS / "dnsname")]

    def spec(tag: str, **extra: Any) -> dict[str, Any]:
        base = {"conflist": ours_conflist, "commands": [ours], "gateway": OURS_GATEWAY}
        return {"tag": tag, "pods": PODS, **base, **extra}

    try:
        with network_namespace("scb-") as node:
            with (
                _process_in(
                    node,
                    sys.executable,
                    "-m",
                    "cni",
                    "--log-format",
                    "json",
                    "agent",
                    "--conf",
                    str(conflist_path),
                    ready=(state / "smarter" / "agent.sock").exists,
                    log_path=agent_log,
                ),
                _process_in(
                    node,
                    sys.executable,
                    "-m",
                    "cni",
                    "dns",
                    "--conf",
                    str(conflist_path),
                    ready=lambda: _answers(node),
                ),
            ):
                up = _series(node, spec("up", resolve=True))
                bundle_up = (
                    None if bundled is None else _series(node, spec("bundle", commands=[bundled]))
                )
                together = _series(node, spec("conc", pods=CONCURRENT, concurrent=True))
            by_agent = _added_by_agent(agent_log)
            down = _series(node, spec("down"))
            ref = _series(
                node,
                {
                    "tag": "ref",
                    "pods": PODS,
                    "conflist": reference_conflist,
                    "commands": [[reference[0]], [reference[1]]],
                    "gateway": REFERENCE_GATEWAY,
                    "resolve": True,
                },
            )
    finally:
        shutil.rmtree(DNSNAME_STATE / reference_name, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)

    measurements = [
        *_timings("ADD, agent up,", up["add"], ref["add"], "<= reference"),
        *_timings("DEL, agent up,", up["del"], ref["del"], "<= reference"),
        *(
            []
            if bundle_up is None
            else [
                *_timings("ADD, agent up, bundle,", bundle_up["add"], ref["add"], "<= reference"),
                *_timings("DEL, agent up, bundle,", bundle_up["del"], ref["del"], "<= reference"),
            ]
        ),
        *_timings("ADD, agent down,", down["add"], ref["add"]),
        *_timings("DEL, agent down,", down["del"], ref["del"]),
        *_timings("ADD return -> name resolves,", up["resolve"], ref["resolve"]),
        Measurement(
            SUITE, "names never resolved (of 30)", up["unresolved"], "pods", ref["unresolved"], "0"
        ),
        Measurement(
            SUITE,
            f"ADDs done by the agent, agent up (of {PODS})",
            sum(c.startswith("up-") for c in by_agent),
            "pods",
            target=str(PODS),
        ),
        Measurement(SUITE, f"{CONCURRENT} concurrent ADDs, wall time", together["wall"], "ms"),
        Measurement(
            SUITE,
            f"{CONCURRENT} concurrent ADDs done by the agent",
            sum(c.startswith("conc-") for c in by_agent),
            "pods",
            target=str(CONCURRENT),
        ),
        Measurement(
            SUITE,
            f"{CONCURRENT} concurrent ADDs, distinct addresses",
            together["distinct"],
            "addresses",
            target=str(CONCURRENT),
        ),
        Measurement(
            SUITE,
            f"{CONCURRENT} concurrent ADDs, names resolving",
            together["resolved"],
            "names",
            target=str(CONCURRENT),
        ),
    ]
    return measurements


def _added_by_agent(log_path: Path) -> list[str]:
    """Container ids of the ADDs the agent logged as done (JSON lines, event `added`)."""
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "added":
            found.append(str(event.get("container_id")))
    return found


def _plugin_command(state: Path) -> list[str]:
    """The plugin as a node runs it: the zipapp exec'd through its shebang, by the system's
    python3 (the driver's PATH is a node's), exactly as containerd execs it.

    Falls back to this interpreter and the source tree when the zipapp cannot be built here.
    """
    system_python = Path("/usr/bin/python3")
    build = subprocess.run(
        [sys.executable, str(REPO / "scripts/build_zipapps.py"), "--out", str(state / "host")],
        capture_output=True,
        text=True,
        check=False,
    )
    zipapp = state / "host" / "smarter-cni"
    if build.returncode == 0 and zipapp.is_file() and system_python.is_file():
        return [str(zipapp)]
    print(f"bench cni: zipapp unavailable ({build.stderr.strip()[-200:]})", file=sys.stderr)
    return [sys.executable, "-m", "cni"]


def _bundle_command(state: Path) -> list[str] | None:
    """The plugin from a bundle built under `state`; None when it cannot be built here."""
    bundle = build_bundle(state / "bundle", bench="cni")
    return None if bundle is None else [str(bundle / "smarter-cni")]


def _answers(node: str) -> bool:
    result = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            node,
            sys.executable,
            "-c",
            "import sys; from testbed.dnsquery import query; "
            f"sys.exit(query('{OURS_GATEWAY}', 'probe.smarter.internal', 0.5) is None)",
        ],
        cwd=REPO,
        capture_output=True,
    )
    return result.returncode == 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--drive"]:
        print(json.dumps(drive(json.load(sys.stdin))))
    else:
        from bench.report import render_table

        print(render_table(run()))
