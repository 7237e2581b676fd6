"""Runs smarter-cni the way a container runtime does, inside a node network namespace.

The "node" is a netns the test creates: the plugin, the agent and dnsmasq run in it (`ip netns
exec`), pods are further named namespaces, and state lives in a throwaway directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.netns import in_netns, netns_path, network_namespace
from testbed.processes import terminate

PYTHON = sys.executable
DNSQUERY = str(Path(__file__).resolve().parents[2] / "testbed" / "dnsquery.py")
REPO = str(Path(__file__).resolve().parents[2])
GATEWAY = "10.210.0.1"


@dataclass
class Outcome:
    """What one plugin run printed and returned."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.stdout)
        return body


def make_state_dir() -> Path:
    # Short (unix socket paths are limited to 107 bytes) and readable by dnsmasq's user.
    path = Path(tempfile.mkdtemp(prefix="scni-", dir="/tmp"))
    path.chmod(0o755)
    return path


def plugin_config(state: Path, **overrides: Any) -> dict[str, Any]:
    plugin: dict[str, Any] = {
        "type": "smarter-cni",
        "stateDir": str(state),
        "dns": {"upstream": ["127.0.0.1#5399"]},
    }
    plugin.update(overrides)
    return plugin


def conflist(plugins: list[dict[str, Any]], version: str = "1.0.0") -> dict[str, Any]:
    return {"cniVersion": version, "name": "smarter", "plugins": plugins}


def runtime_config(conflist_: dict[str, Any], index: int = 0, **extra: Any) -> dict[str, Any]:
    """The configuration a runtime passes to plugin `index` of the conflist."""
    config = dict(conflist_["plugins"][index])
    config["cniVersion"] = conflist_["cniVersion"]
    config["name"] = conflist_["name"]
    config.update(extra)
    return config


@dataclass
class Node:
    """A node netns with smarter-cni's state directory and conflist."""

    netns: str
    state: Path
    conflist: dict[str, Any]
    command: list[str] = field(default_factory=lambda: [PYTHON, "-m", "cni"])
    # (CNI_COMMAND, CNI_CONTAINERID) of every run of smarter-cni, in order.
    invocations: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def conflist_path(self) -> Path:
        path = self.state / "10-smarter.conflist"
        path.write_text(json.dumps(self.conflist))
        return path

    @property
    def hosts_dir(self) -> Path:
        return self.state / "hosts"

    @property
    def leases_dir(self) -> Path:
        return self.state / "leases"

    def leases(self) -> list[str]:
        if not self.leases_dir.is_dir():
            return []
        return sorted(p.name for p in self.leases_dir.iterdir() if not p.name.startswith("."))

    def records(self) -> list[str]:
        if not self.hosts_dir.is_dir():
            return []
        return sorted(p.name for p in self.hosts_dir.iterdir() if not p.name.startswith("."))

    def cni(
        self,
        command: str,
        config: dict[str, Any] | None = None,
        *,
        container_id: str | None = None,
        netns: str | None = None,
        ifname: str | None = "eth0",
        args: str | None = None,
        plugin: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Outcome:
        """Exec the plugin in the node netns with CNI_* set and `config` on stdin."""
        variables = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command}
        variables["CNI_PATH"] = "/usr/lib/cni"
        for name, value in (
            ("CNI_CONTAINERID", container_id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", ifname if container_id is not None else None),
            ("CNI_ARGS", args),
        ):
            if value is not None:
                variables[name] = value
        variables.update(env or {})
        payload = json.dumps(runtime_config(self.conflist) if config is None else config)
        if plugin is None:
            self.invocations.append((command, container_id))
        result = subprocess.run(
            ["ip", "netns", "exec", self.netns, *(plugin or self.command)],
            input=payload,
            capture_output=True,
            text=True,
            env=variables,
            cwd=REPO,
            timeout=60,
        )
        return Outcome(result.returncode, result.stdout, result.stderr)

    def add_pod(
        self, pod: str, container_id: str, name: str, namespace: str = "default", **kw: Any
    ) -> Outcome:
        return self.cni(
            "ADD",
            container_id=container_id,
            netns=netns_path(pod),
            args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}",
            **kw,
        )

    def del_pod(self, container_id: str, pod: str | None = None, **kw: Any) -> Outcome:
        return self.cni(
            "DEL",
            container_id=container_id,
            netns=netns_path(pod) if pod else "",
            **kw,
        )

    def links(self) -> list[str]:
        result = subprocess.run(
            ["ip", "-n", self.netns, "-o", "link", "show"],
            capture_output=True,
            text=True,
            check=True,
        )
        return [line.split(":")[1].strip().split("@")[0] for line in result.stdout.splitlines()]

    def resolve(self, name: str, *, from_netns: str | None = None) -> list[str] | None:
        """A records for `name` from the gateway's dnsmasq; None when it does not answer."""
        result = in_netns(from_netns or self.netns, PYTHON, DNSQUERY, GATEWAY, name, check=False)
        if result.returncode == 2:
            return None
        if result.returncode not in (0, 1):
            raise RuntimeError(f"DNS query for {name} failed: {result.stderr}")
        return result.stdout.split()


@contextmanager
def node(**overrides: Any) -> Iterator[Node]:
    """A fresh node netns and state dir, both removed afterwards."""
    state = make_state_dir()
    try:
        with network_namespace("scn-") as netns:
            yield Node(netns, state, conflist([plugin_config(state, **overrides)]))
    finally:
        shutil.rmtree(state, ignore_errors=True)


@contextmanager
def process_in(netns: str, *command: str, ready: Any = None) -> Iterator[subprocess.Popen[bytes]]:
    """A process in `netns` (`ip netns exec` execs it: same PID), killed by PID afterwards."""
    with tempfile.TemporaryFile() as log:
        yield from _supervise(netns, command, ready, log)


def _supervise(
    netns: str, command: tuple[str, ...], ready: Any, log: Any
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, *command], stdout=log, stderr=log, cwd=REPO
    )
    try:
        if ready is not None:
            deadline = time.monotonic() + 20
            while not ready():
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(
                        f"{command} did not become ready: {log.read().decode(errors='replace')}"
                    )
                time.sleep(0.05)
        yield process
    finally:
        terminate(process)
        log.seek(0)
        print(log.read().decode(errors="replace")[-3000:])  # pytest shows it when a test fails


@dataclass
class Agent:
    """A running `smarter-cni agent` and its structured (JSON) log."""

    process: subprocess.Popen[bytes]
    log: Any

    def events(self) -> list[dict[str, Any]]:
        """Every JSON event the agent logged so far."""
        # pread: the agent writes through the same open file, so its offset must not move.
        fd = self.log.fileno()
        text = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
        found = []
        for line in text.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event:
                found.append(event)
        return found

    def answered(self, *events: str) -> list[tuple[str, str | None]]:
        """(command, container id) of every request the agent answered itself (or `events`)."""
        wanted = events or ("served", "refused")
        return [
            (e["command"], e.get("container_id")) for e in self.events() if e["event"] in wanted
        ]

    def added(self) -> list[str | None]:
        """Container ids of the ADDs whose work this agent did."""
        return [e.get("container_id") for e in self.events() if e["event"] == "added"]


# How a test runs: under `agent(node)`, or with the plugin doing the work itself.
AgentMode = Callable[[Node], AbstractContextManager[Any]]


@contextmanager
def agent(node_: Node, *, serves_every_call: bool = True) -> Iterator[Agent]:
    """The agent in the node netns, logging JSON events that tests can read.

    With `serves_every_call`, on leaving, every run of the plugin meanwhile must have been
    answered (or knowingly deferred) by this agent: a test in agent mode then proves the agent
    did the work, not the plugin's in-process fallback.
    """
    socket_path = node_.state / "agent.sock"
    start = len(node_.invocations)
    conf = str(node_.conflist_path)
    command = (PYTHON, "-m", "cni", "--log-format", "json", "agent", "--conf", conf)
    supervised = contextmanager(_supervise)
    with (
        tempfile.TemporaryFile() as log,
        supervised(node_.netns, command, socket_path.exists, log) as process,
    ):
        made = Agent(process, log)
        yield made
        if serves_every_call:
            _assert_agent_served(made, node_.invocations[start:])


def _assert_agent_served(made: Agent, invocations: list[tuple[str, str | None]]) -> None:
    expected = Counter(call for call in invocations if call[0] != "VERSION")
    # A deferred request (a netns the agent cannot see) is the plugin's by design.
    answered = Counter(made.answered("served", "refused", "deferred"))
    missing = expected - answered
    assert not missing, f"done in-process, not by the agent: {sorted(missing.elements())}"


@contextmanager
def dnsmasq(node_: Node) -> Iterator[subprocess.Popen[bytes]]:
    with process_in(
        node_.netns,
        PYTHON,
        "-m",
        "cni",
        "dns",
        "--conf",
        str(node_.conflist_path),
        ready=lambda: node_.resolve("probe.smarter.internal") is not None,
    ) as process:
        yield process


@contextmanager
def pods(count: int, prefix: str = "scp-") -> Iterator[list[str]]:
    with ExitStack() as stack:
        yield [stack.enter_context(network_namespace(prefix)) for _ in range(count)]
