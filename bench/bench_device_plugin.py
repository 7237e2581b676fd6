"""smarter-device-manager: hotplug-to-ListAndWatch latency, Allocate latency, start-up with 200
matching device nodes, and the daemon's memory (RSS and PSS) beside its import floor, on a typical
gateway and with 200 resources, and over 10,000 Allocate calls and 1,000 hotplug events, against
the kubelet stand-in.

Run: python -m bench device_plugin   (the daemon gets the env the DaemonSet gives it)
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.memory import Memory, import_floor, imported_modules, memory_of
from bench.report import Measurement, Summary
from testbed.processes import terminate

SUITE = "device-manager"
NODES = 200
HOTPLUG_EVENTS = 30
ALLOCATIONS = 300
# Issue 16's no-growth runs, and its memory goal: a typical gateway within 4 MB of the floor.
GROWTH_ALLOCATIONS = 10_000
GROWTH_HOTPLUG_EVENTS = 1_000
GROWTH_LIMIT_MB = 1.0
# Growth is read in RSS, PSS, and PSS's anonymous part (bench.memory.Memory): the file-backed
# rest of PSS moves when other processes sharing the libraries start or stop.
GROWTH_KINDS = (("rss", "RSS"), ("pss", "PSS"), ("pss_anon", "PSS (anonymous pages)"))
ABOVE_FLOOR_MB = 4.0
RULES = """\
- devicematch: ^ttyUSB[0-9]+$
  nummaxdevices: 1
- devicematch: ^ttyACM[0-9]+$
  nummaxdevices: 1
- devicematch: ^snd$
  nummaxdevices: 20
"""
REPO = Path(__file__).resolve().parents[1]
DAEMONSET = REPO / "deploy" / "device-manager" / "daemonset.yaml"
RSS_TARGET_MB = 45.0


def _mknod(path: Path, major: int, minor: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o660, os.makedev(major, minor))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _deployed_env() -> dict[str, str]:
    """This environment plus the env the DaemonSet gives the daemon (MALLOC_ARENA_MAX), so the
    memory measured is the memory deployed."""
    import yaml

    daemonset = yaml.safe_load(DAEMONSET.read_text())
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    env = dict(os.environ)
    env.update({item["name"]: str(item["value"]) for item in container.get("env", [])})
    return env


def _daemon(root: Path, rules: Path, importtime: Path | None = None) -> subprocess.Popen[bytes]:
    """The daemon; with `importtime`, its `-X importtime` report (and its log) go there."""
    command = _command(root, rules)
    if importtime is None:
        return subprocess.Popen(command, cwd=REPO, env=_deployed_env(), stderr=subprocess.DEVNULL)
    with importtime.open("wb") as report:
        return subprocess.Popen(
            [command[0], "-X", "importtime", *command[1:]],
            cwd=REPO,
            env=_deployed_env(),
            stderr=report,
        )


def _target(value: float, limit: float, unit: str) -> str:
    """The target column, saying plainly when this run missed it."""
    target = f"< {limit:g} {unit}"
    return target if value < limit else f"{target}: NOT MET"


def _command(root: Path, rules: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "device_plugin",
        "--host-root",
        str(root),
        "--rules",
        str(rules),
        # The kubelet's directory is the node's own, never under the host root: the stand-in's.
        "--plugin-dir",
        str(_plugin_dir(root)),
        "--log-level",
        "warning",
    ]


def _plugin_dir(root: Path) -> Path:
    """Where the kubelet stand-in of a run in `root` listens."""
    return root / "kubelet" / "device-plugins"


def _idle_rss_mb(root: Path) -> float:
    """The floor: the daemon serving nothing (Python, grpc, protobuf, asyncio, watchdog)."""
    rules = root / "etc/none.yaml"
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text("- devicematch: ^no-such-device$\n  nummaxdevices: 1\n")
    (root / "dev").mkdir(exist_ok=True)
    process = _daemon(root, rules)
    try:
        time.sleep(2.0)
        return _rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


# A Raspberry Pi class gateway as the default rules (deploy/.../rules-configmap.yaml) see it.
TYPICAL_GATEWAY = {
    "ttyAMA0": (204, 64),
    "ttyUSB0": (188, 0),
    "ttyACM0": (166, 0),
    "i2c-1": (89, 1),
    "gpiochip0": (254, 0),
    "video0": (81, 0),
    "rtc0": (249, 0),
    "snd/controlC0": (116, 0),
    "snd/pcmC0D0p": (116, 16),
}
PRODUCTION_RULES = REPO / "deploy" / "device-manager" / "rules-configmap.yaml"


@contextmanager
def typical_gateway(root: Path, kubelet_module: Any) -> Iterator[tuple[int, int, Path]]:
    """The daemon serving a typical gateway (default rules) under `root`, its resources
    registered: (its pid, how many resources, its `-X importtime` report)."""
    import yaml

    rules = root / "etc/conf.yaml"
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text(yaml.safe_load(PRODUCTION_RULES.read_text())["data"]["conf.yaml"])
    for name, (major, minor) in TYPICAL_GATEWAY.items():
        _mknod(root / "dev" / name, major, minor)
    stand_in = kubelet_module.start(_plugin_dir(root))
    report = root / "importtime.txt"
    process = _daemon(root, rules, report)
    try:
        wanted = {"smarter-devices/ttyUSB0", "smarter-devices/snd", "smarter-devices/rtc0"}
        stand_in.wait_registered(wanted, timeout=60)
        time.sleep(1.0)
        registered = set(stand_in.registered())
        for resource in registered:
            stand_in.wait_devices(resource, lambda devices: bool(devices), timeout=30)
        yield process.pid, len(registered), report
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        stand_in.stop()


def _typical(root: Path, kubelet_module: Any) -> tuple[int, Memory, Memory]:
    """Resources and memory of the daemon on a typical gateway with the default rules, and
    the import floor of what it imported."""
    with typical_gateway(root, kubelet_module) as (pid, count, report):
        memory = memory_of(pid)
    modules = imported_modules(report.read_text(errors="replace"))
    return count, memory, import_floor(modules, cwd=REPO, env=_deployed_env())


def _memory_rows(
    typical_count: int, typical: Memory, floor: Memory, registered: Memory, resources: int
) -> list[Measurement]:
    rows = []
    for kind in ("rss", "pss"):
        name = kind.upper()
        floor_mb = getattr(floor, f"{kind}_mb")
        typical_mb = getattr(typical, f"{kind}_mb")
        limit = floor_mb + ABOVE_FLOOR_MB
        verdict = "met" if typical_mb <= limit else "NOT MET"
        rows += [
            Measurement(SUITE, f"{name} import floor (the daemon's imports, nothing run)",
                        floor_mb, "MB"),
            Measurement(
                SUITE,
                f"{name} on a typical gateway, default rules ({typical_count} resources)",
                typical_mb,
                "MB",
                reference=floor_mb,
                target=f"goal <= floor + {ABOVE_FLOOR_MB:g} MB ({typical_mb - floor_mb:+.1f}):"
                f" {verdict}",
            ),
            Measurement(SUITE, f"{name} with {resources} resources",
                        getattr(registered, f"{kind}_mb"), "MB", reference=floor_mb),
        ]  # fmt: skip
    return rows


def _growth_rows(what: str, before: Memory, after: Memory) -> list[Measurement]:
    rows = []
    for kind, label in GROWTH_KINDS:
        growth = getattr(after, f"{kind}_mb") - getattr(before, f"{kind}_mb")
        verdict = "met" if growth <= GROWTH_LIMIT_MB else "NOT MET"
        rows.append(
            Measurement(
                SUITE,
                f"{label} growth over {what}",
                growth,
                "MB",
                target=f"goal no growth (<= {GROWTH_LIMIT_MB:g} MB): {verdict}",
            )
        )
    return rows


def run() -> list[Measurement]:
    sys.path.insert(0, str(REPO))
    from testbed import kubelet as kubelet_module

    root = Path(tempfile.mkdtemp(prefix="sdmb", dir="/tmp"))
    process: subprocess.Popen[bytes] | None = None
    stand_in = None
    try:
        dev = root / "dev"
        rules = root / "etc/conf.yaml"
        rules.parent.mkdir(parents=True)
        rules.write_text(RULES)
        for index in range(NODES - 1):
            _mknod(dev / f"ttyUSB{index}", 188, index)
        _mknod(dev / "snd/controlC0", 116, 0)
        idle_rss = _idle_rss_mb(root / "idle")
        typical_count, typical, floor = _typical(root / "typical", kubelet_module)
        stand_in = kubelet_module.start(_plugin_dir(root))
        wanted = {f"smarter-devices/ttyUSB{i}" for i in range(NODES - 1)} | {"smarter-devices/snd"}

        started = time.perf_counter()
        process = _daemon(root, rules)
        stand_in.wait_registered(wanted, timeout=60)
        startup_s = time.perf_counter() - started
        for resource in wanted:
            stand_in.wait_devices(resource, lambda devices: bool(devices), timeout=30)
        time.sleep(0.5)  # let start-up garbage settle before reading memory
        registered = memory_of(process.pid)
        rss = registered.rss_mb

        # Health changes of an existing resource: the node vanishes, then returns.
        updates = stand_in.updates("smarter-devices/ttyUSB0")
        while not updates.empty():
            updates.get_nowait()
        toggles = []
        for event in range(HOTPLUG_EVENTS):
            node = dev / "ttyUSB0"
            begin = time.perf_counter()
            if event % 2 == 0:
                node.unlink()
            else:
                _mknod(node, 188, 0)
            updates.get(timeout=10)
            toggles.append((time.perf_counter() - begin) * 1000)
            time.sleep(0.02)

        # New devices: a node appears until its first ListAndWatch list reaches the kubelet.
        arrivals = []
        for index in range(HOTPLUG_EVENTS):
            resource = f"smarter-devices/ttyACM{index}"
            begin = time.perf_counter()
            _mknod(dev / f"ttyACM{index}", 166, index)
            stand_in.wait_devices(resource, lambda devices: bool(devices), timeout=10)
            arrivals.append((time.perf_counter() - begin) * 1000)
            time.sleep(0.02)

        connection = stand_in.connection("smarter-devices/snd")
        allocations = []
        for _ in range(ALLOCATIONS):
            begin = time.perf_counter()
            connection.allocate(["snd-0"])
            allocations.append((time.perf_counter() - begin) * 1000)
        rss_after = _rss_mb(process.pid)
        before_allocations = memory_of(process.pid)
        for _ in range(GROWTH_ALLOCATIONS):
            connection.allocate(["snd-0"])
        time.sleep(0.5)
        after_allocations = memory_of(process.pid)
        for _ in range(GROWTH_HOTPLUG_EVENTS):
            node = dev / "ttyUSB0"
            if node.exists():
                node.unlink()
            else:
                _mknod(node, 188, 0)
            updates.get(timeout=10)
        time.sleep(0.5)
        after_hotplug = memory_of(process.pid)

        everything = set(stand_in.registered())
        begin = time.perf_counter()
        stand_in.restart()
        stand_in.wait_registered(everything, timeout=60)
        reregistered_s = time.perf_counter() - begin

        health = Summary.of(toggles)
        new = Summary.of(arrivals)
        allocate = Summary.of(allocations)
        return [
            Measurement(
                SUITE,
                f"hotplug: node vanishes/returns -> ListAndWatch, median of {len(toggles)}",
                health.median,
                "ms",
                target=_target(health.median, 100, "ms"),
            ),
            Measurement(
                SUITE, "hotplug: node vanishes/returns -> ListAndWatch, p95", health.p95, "ms"
            ),
            Measurement(
                SUITE,
                f"hotplug: new node -> registered + listed, median of {len(arrivals)}",
                new.median,
                "ms",
                target=_target(new.median, 100, "ms"),
            ),
            Measurement(SUITE, "hotplug: new node -> registered + listed, p95", new.p95, "ms"),
            Measurement(
                SUITE,
                f"Allocate round trip, median of {len(allocations)}",
                allocate.median,
                "ms",
                target=_target(allocate.median, 2, "ms"),
            ),
            Measurement(SUITE, "Allocate round trip, p95", allocate.p95, "ms"),
            Measurement(
                SUITE, f"start -> {len(wanted)} resources registered", startup_s * 1000, "ms"
            ),
            Measurement(
                SUITE,
                f"RSS after registering {len(wanted)} resources",
                rss,
                "MB",
                target=_target(rss, RSS_TARGET_MB, "MB"),
            ),
            Measurement(
                SUITE,
                "RSS after the hotplug and Allocate runs",
                rss_after,
                "MB",
                target=_target(rss_after, RSS_TARGET_MB, "MB"),
            ),
            Measurement(
                SUITE,
                f"kubelet restart -> {len(everything)} resources registered again",
                reregistered_s * 1000,
                "ms",
            ),
            Measurement(SUITE, "RSS serving no resource", idle_rss, "MB"),
            *_memory_rows(typical_count, typical, floor, registered, len(wanted)),
            *_growth_rows(
                f"{GROWTH_ALLOCATIONS} Allocate calls", before_allocations, after_allocations
            ),
            *_growth_rows(
                f"{GROWTH_HOTPLUG_EVENTS} hotplug events", after_allocations, after_hotplug
            ),
        ]
    finally:
        if process is not None:
            terminate(process, grace=10)
        if stand_in is not None:
            stand_in.stop()
        shutil.rmtree(root, ignore_errors=True)
