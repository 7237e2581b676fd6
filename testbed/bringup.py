"""Bringing a simulated gateway up as a node is installed: the parts, in the order a node has them.

The node starts from a distribution's own containerd config (Debian's packaged one by
default); then the installers of the CNI and runtime DaemonSets run against the node's
directory, installing the host-side bundle (scripts/build_bundle.py) at the node's
/opt/smarter-edge, the plugin and the runtime; each exec'd program gets its settings file beside
it, as an operator writes it; containerd starts with only what an operator also sets (its paths,
the sandbox image; testbed.node_config), in a mount namespace where the node's /opt/smarter-edge
is at /opt/smarter-edge and no python3 of the machine is left (testbed.hidden_python), so what it
executes runs on the bundle as on a node without python3. The smarter-cni agent and dnsmasq run
as the DaemonSet runs them, in their image's Python.
Each step leaves what it started with the caller's `Processes`, so teardown finds it also
when a later step fails.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from runtime_handler.containerd_config import HANDLER
from smarter_common import containerd
from smarter_common.errors import SmarterError
from smarter_common.hostroot import HOST_ROOT_ENV
from testbed import hidden_python
from testbed import images as image_build
from testbed.containerd import overlay_works
from testbed.layout import (
    CNI_HOST_ROOT_ENV,
    PRODUCTION_CONFLIST,
    REFERENCE_PLUGINS,
    REPO,
    RUNTIME_BINARY,
    RUNTIME_HOST_ROOT_ENV,
    SYSTEM_PATH,
    GatewayConfig,
    GatewayError,
    GatewayPaths,
    settings_file,
)
from testbed.node_config import dumps, operator_paths
from testbed.processes import Processes, Started, read_lines


def build_bundle(out: Path) -> None:
    """The host-side bundle (smarter-cni, smarter-hybrid-runtime and what they run on) in
    `out`, as the image builds it, for the default prefix. Built once per process (a build
    takes seconds, a test session brings up many gateways) and hard-linked into each `out`."""
    if not _BUNDLES:
        cache = Path(tempfile.mkdtemp(prefix=f"se-bundle-{os.getpid()}-"))
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        _build_bundle(cache / "bundle")
        _BUNDLES.append(cache / "bundle")
    shutil.copytree(_BUNDLES[0], out, copy_function=_link_or_copy)


# The bundle this process built (see build_bundle).
_BUNDLES: list[Path] = []


def _build_bundle(out: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_bundle.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise GatewayError(f"building the bundle failed: {result.stderr.strip()}")


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another filesystem
        shutil.copy2(source, destination)


def share_work_directory(paths: GatewayPaths) -> None:
    """The work directory becomes a shared mount before anything is mounted under it, so that
    containerd's mounts in its own namespace (pods' network namespaces, root filesystems) are
    seen by the node's other programs, and the simulator's by containerd."""
    hidden_python.share(paths.work)


def containerd_wrapper(paths: GatewayPaths) -> list[str]:
    """What containerd is started through: no python3, the node's bundle at its prefix."""
    return hidden_python.without_python_sharing(paths.node.path(hidden_python.PREFIX))


def add_netns(netns: str) -> None:
    """The node's network namespace (its loopback still down)."""
    subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)


def ip(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ip` inside the node's network namespace."""
    return subprocess.run(["ip", "-n", netns, *args], check=check, capture_output=True, text=True)


def start_simulator(
    paths: GatewayPaths, processes: Processes, core: str, count: int = 1
) -> Started:
    """`smarter-sim up` on the host root with `count` cores of type `core`, ready once it
    says so."""
    paths.sim_root.mkdir(parents=True, exist_ok=True)
    cores = [argument for _ in range(count) for argument in ("--core", core)]
    started = processes.start(
        "simulator",
        [sys.executable, "-m", "sim", "up", "--root", paths.sim_root, *cores],
        cwd=REPO,
    )

    def ready() -> bool:
        return any(line.strip() == "ready" for line in read_lines(started.log_path))

    try:
        processes.wait_for(started, ready, timeout=60, what="print `ready`")
    except SmarterError as error:
        raise GatewayError(f"simulator: {error}") from error
    return started


def install_node(paths: GatewayPaths, config: GatewayConfig, installers_log: Path) -> None:
    """The node's containerd config and what the DaemonSets' init containers install."""
    distribution = config.containerd_config
    try:
        text = distribution.read_text()
    except OSError as error:
        raise GatewayError(
            f"cannot read the distribution's containerd config {distribution}: {error}"
        ) from error
    layout = paths.containerd
    layout.config.parent.mkdir(parents=True, exist_ok=True)
    layout.config.write_text(text)
    node = containerd.discover(paths.node)
    # The distribution's CNI plugins (Debian's containernetworking-plugins), where its
    # containerd looks for them.
    bin_dir = paths.node.path(node.cni_bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    for plugin in sorted(REFERENCE_PLUGINS.iterdir()):
        (bin_dir / plugin.name).symlink_to(plugin)
    # The CNI DaemonSet's init container: `smarter-cni install --host-root=/host ...`.
    run_installer(
        "smarter-cni install",
        [
            "cni",
            "install",
            f"--host-root={paths.node_root}",
            f"--bundle={paths.bundle}",
            f"--plugin={paths.bundle / 'smarter-cni'}",
            f"--conflist={PRODUCTION_CONFLIST}",
        ],
        installers_log,
    )
    if not paths.conflist.is_file():
        raise GatewayError(f"smarter-cni install did not write {paths.conflist}")
    # The runtime DaemonSet's init container: the bundle, the runtime at its default path
    # (/usr/local/bin under the node's root), then the config (whose BinaryName containerd
    # here finds under the node's directory: configure_containerd).
    run_installer(
        "smarter-hybrid-runtime install-containerd-config",
        [
            "runtime_handler",
            "install-containerd-config",
            f"--host-root={paths.node_root}",
            f"--bundle={paths.bundle}",
        ],
        installers_log,
    )
    runtime = paths.runtime
    # What an operator writes for a node whose devices are the simulator's (docs/deploy.md):
    # the runtime's host root; smarter-cni's is the node's own directory here.
    if config.runtime_settings_in == "file":
        write_settings(runtime, {RUNTIME_HOST_ROOT_ENV: str(paths.sim_root)})
    write_settings(bin_dir / "smarter-cni", {CNI_HOST_ROOT_ENV: str(paths.node_root)})


def run_installer(name: str, module_and_args: list[str], installers_log: Path) -> None:
    """Run an installer as its DaemonSet does (its entry point, in the suite's image)."""
    result = subprocess.run(
        [sys.executable, "-m", *module_and_args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    installers_log.parent.mkdir(parents=True, exist_ok=True)
    with installers_log.open("a") as log_file:
        log_file.write(f"$ {name}\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        raise GatewayError(
            f"{name} failed with status {result.returncode}",
            hint=(result.stderr or result.stdout).strip()[-2000:],
        )


def write_settings(executable: Path, settings: Mapping[str, str]) -> Path:
    """`<executable>.conf`: the exec'd program's own settings, one `NAME=value` a line."""
    path = settings_file(executable)
    lines = [f"# {executable.name}'s settings on this simulated gateway (testbed.bringup)"]
    lines.extend(f"{name}={value}" for name, value in settings.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def start_cni(paths: GatewayPaths, processes: Processes) -> None:
    """The smarter-cni agent and dnsmasq in the node's namespace, as the DaemonSet runs them."""
    # The DaemonSet's containers see the node's / at /host (SMARTER_HOST_ROOT).
    env = {**os.environ, HOST_ROOT_ENV: str(paths.node_root)}
    # dnsmasq forwards other names to the node's resolvers, read from the node's
    # /etc/resolv.conf; the node directory gets the machine's.
    resolv_conf = paths.node.path("/etc/resolv.conf")
    if not resolv_conf.exists():
        resolv_conf.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile("/etc/resolv.conf", resolv_conf)
    # containerd hands the plugin pod netns paths as it sees them (under its state dir); the
    # agent resolves every path under the node's root, as a DaemonSet that mounts the
    # node's / does. So the node's directory shows containerd's state dir at the same path.
    state = paths.containerd.state
    mirror = paths.node.path(str(state))
    mirror.parent.mkdir(parents=True, exist_ok=True)
    mirror.symlink_to(state, target_is_directory=True)
    socket = paths.node.path(paths.netconf().socket_path)
    agent = processes.start(
        "smarter-cni-agent",
        [sys.executable, "-m", "cni", "agent", "--conf", PRODUCTION_CONFLIST],
        netns=paths.netns,
        env=env,
        cwd=REPO,
    )
    try:
        processes.wait_for(agent, socket.exists, timeout=30, what=f"open {socket}")
    except SmarterError as error:
        raise GatewayError(f"smarter-cni agent: {error}") from error
    dns = processes.start(
        "dnsmasq",
        [sys.executable, "-m", "cni", "dns", "--conf", PRODUCTION_CONFLIST],
        netns=paths.netns,
        env=env,
        cwd=REPO,
    )
    time.sleep(0.3)
    try:
        dns.check_alive()
    except SmarterError as error:
        raise GatewayError(f"smarter-cni dns: {error}") from error


def configure_containerd(paths: GatewayPaths) -> str:
    """Set in the installed config only what an operator also sets (paths, sandbox image);
    the snapshotter it names (overlayfs where the work directory allows it, else native)."""
    layout = paths.containerd
    snapshotter = "overlayfs" if overlay_works(paths.work) else "native"
    layout.pod_logs.mkdir(parents=True, exist_ok=True)
    node = containerd.discover(paths.node)
    text = operator_paths(
        layout.config.read_text(),
        layout,
        sandbox_image=image_build.PAUSE_IMAGE,
        cni_bin_dir=paths.node.path(node.cni_bin_dir),
        cni_conf_dir=paths.node.path(node.cni_conf_dir),
        snapshotter=snapshotter,
    )
    layout.config.write_text(_runtime_under_the_node(text, paths))
    return snapshotter


def _runtime_under_the_node(text: str, paths: GatewayPaths) -> str:
    """The config with the runtime's BinaryName, a host path, at its place in the node's
    directory: containerd here sees the node's files there, as for the CNI directories."""
    source = str(paths.containerd.config)
    document = containerd.parse_config(text, source=source)
    version = containerd.config_version(document, source=source)
    table = (*containerd.cri_runtime_plugin(version), "containerd", "runtimes", HANDLER)
    options = containerd.lookup(document, (*table, "options"))
    if not isinstance(options, dict) or options.get("BinaryName") != RUNTIME_BINARY:
        raise GatewayError(f"the runtime's installer did not name {RUNTIME_BINARY} in {source}")
    options["BinaryName"] = str(paths.runtime)
    return dumps(document)


def containerd_environment(paths: GatewayPaths, config: GatewayConfig) -> dict[str, str]:
    """containerd's environment, which every program it execs inherits."""
    env = {"PATH": SYSTEM_PATH, "HOME": "/root"}
    if config.runtime_settings_in == "environment":
        # The old leak's conditions: the shared variable and the runtime's own both in
        # containerd's environment, which every exec'd program inherits.
        env[RUNTIME_HOST_ROOT_ENV] = str(paths.sim_root)
        env[HOST_ROOT_ENV] = str(paths.sim_root)
    return env
