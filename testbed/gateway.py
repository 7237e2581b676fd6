"""A whole simulated gateway: a node network namespace, containerd, and the three plugins.

The node is a network namespace of its own (the host's is never touched) and two directories:
the node's own filesystem (`node/`: containerd's config, the CNI directories, /usr/local/bin,
the kubelet's plugin directory, smarter-cni's state) and the simulator's host root (`host/`:
the remote cores' sysfs, /dev, /lib/firmware). The node is installed as a real one is: a
distribution's own containerd config (Debian's packaged one by default), then the installers
of the CNI and runtime DaemonSets against the node's directory, then containerd with only what
an operator also sets (its paths, the sandbox image; testbed.node_config). Each exec'd program
gets its settings file beside it, as an operator writes it. The smarter-cni agent and dnsmasq
run as the DaemonSet runs them; the device manager registers with a kubelet stand-in.
Everything started is stopped by PID, and every namespace and mount removed, on the way out,
also after a failure or Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cni.names import app_name
from smarter_common import containerd
from smarter_common.errors import SmarterError
from smarter_common.hostroot import HOST_ROOT_ENV, HostRoot
from smarter_common.logs import get_logger
from testbed import images as image_build
from testbed.containerd import (
    HYBRID_HANDLER,
    Containerd,
    ContainerdLayout,
    mounts_under,
    overlay_works,
    unmount_all,
)
from testbed.cri.client import ContainerSpec, CriClient, CriError, PodSpec
from testbed.kubelet import Kubelet
from testbed.node_config import operator_paths
from testbed.processes import Processes, Started

if TYPE_CHECKING:
    from cni.config import NetConf

log = get_logger("testbed.gateway")

REPO = Path(__file__).resolve().parents[1]
# containerd's PATH: the zipapps' `#!/usr/bin/env -S python3 ...` must find the distribution's
# python3.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
REFERENCE_PLUGINS = Path("/usr/lib/cni")
PRODUCTION_CONFLIST = REPO / "deploy" / "cni" / "10-smarter.conflist"
# Debian 12's packaged /etc/containerd/config.toml (containerd 1.6), as shipped.
DEBIAN_CONTAINERD_CONFIG = REPO / "tests" / "fixtures" / "containerd" / "debian-12.toml"
# Where the runtime DaemonSet installs the runtime, and its settings file beside it.
RUNTIME_BINARY = "/usr/local/bin/smarter-hybrid-runtime"
SETTINGS_SUFFIX = ".conf"
# The exec'd programs' own host-root settings (never the shared SMARTER_HOST_ROOT).
RUNTIME_HOST_ROOT_ENV = "SMARTER_RUNTIME_HOST_ROOT"
CNI_HOST_ROOT_ENV = "SMARTER_CNI_HOST_ROOT"
RPROC_RESOURCE_PREFIX = "smarter-devices/rproc"
PRODUCTION_RULES = REPO / "deploy" / "device-manager" / "rules-configmap.yaml"
RUNTIME_CLASS = REPO / "deploy" / "runtime" / "runtimeclass.yaml"


class GatewayError(SmarterError):
    """The simulated gateway could not be brought up or did something unexpected."""


Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class GatewayConfig:
    """What to bring up."""

    core: str = "cortex-m4"
    firmware: tuple[str, ...] = ("hello", "crash")
    device_manager: bool = True
    work_parent: Path = Path("/tmp")
    keep_work_dir: bool = False
    # The distribution's containerd config the node starts from.
    containerd_config: Path = DEBIAN_CONTAINERD_CONFIG
    # Where the runtime's own settings are given: its settings file (as the docs tell an
    # operator), or containerd's environment (a systemd drop-in), beside the shared
    # SMARTER_HOST_ROOT that neither exec'd program may read.
    runtime_settings_in: Literal["file", "environment"] = "file"


@dataclass
class Pod:
    """A pod the gateway runs: its spec, sandbox ID, address, and containers by name."""

    spec: PodSpec
    id: str
    ip: str
    containers: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def log_directory(self) -> Path:
        return Path(self.spec.log_directory)


@dataclass(frozen=True)
class Allocation:
    """What the device manager handed over for one resource, as the kubelet passes it on."""

    resource: str
    device_ids: tuple[str, ...]
    env: Mapping[str, str]
    devices: tuple[tuple[str, str, str], ...]


class Gateway:
    """A simulated gateway, brought up by `start()` (or `with`), torn down by `close()`."""

    def __init__(self, config: GatewayConfig | None = None, progress: Progress = _quiet) -> None:
        self.config = config or GatewayConfig()
        self.progress = progress
        self.work = Path(tempfile.mkdtemp(prefix="se-gw-", dir=self.config.work_parent))
        # dnsmasq drops to `nobody` and must still reach the hosts directory below.
        self.work.chmod(0o755)
        self.processes = Processes(self.work / "logs")
        self.netns = f"se-node-{secrets.token_hex(3)}"
        # The simulator's host root: devices, sysfs and the firmware directory. The runtime
        # and the device manager resolve those under it.
        self.sim_root = self.work / "host"
        self.host = HostRoot(self.sim_root)
        # The node's own filesystem: what a node keeps whatever its devices are (containerd's
        # config, the CNI directories, the installed runtime, the kubelet's plugin directory,
        # smarter-cni's state and socket). The installers and smarter-cni work under it.
        self.node_root = self.work / "node"
        self.node = HostRoot(self.node_root)
        self.layout = ContainerdLayout(
            self.work, config_file=self.node.path("/etc/containerd/config.toml")
        )
        # The kubelet stand-in serves the node's /var/lib/kubelet/device-plugins.
        self.node_var_lib = self.node.path("/var/lib")
        self.plugin_dir = self.node_var_lib / "kubelet" / "device-plugins"
        self.conflist_path = self.node.path("/etc/cni/net.d") / PRODUCTION_CONFLIST.name
        self.runtime = self.node.path(RUNTIME_BINARY)
        self.zipapps = self.work / "bin"
        self.snapshotter = "overlayfs"
        self.images: image_build.Images | None = None
        self.containerd: Containerd | None = None
        self.cri: CriClient | None = None
        self.kubelet: Kubelet | None = None
        self.pods: dict[str, Pod] = {}
        self._netns_made = False
        self._simulator: Started | None = None
        self._closed = False

    # Bring-up

    def __enter__(self) -> Gateway:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.progress("building the host-side zipapps (smarter-cni, smarter-hybrid-runtime)")
        self._build_zipapps()
        self.progress("building images: pause, busybox, firmware for the " + self.config.core)
        self.images = image_build.build_images(
            self.work / "images", core=self.config.core, firmware=self.config.firmware
        )
        self.progress(f"creating the node's network namespace {self.netns}")
        self._make_netns()
        self.progress("starting the simulator (remote cores over FUSE, QEMU on start)")
        self._start_simulator()
        self.progress(
            f"installing the node: {self.config.containerd_config.name}, then the installers"
            " (smarter-cni install, smarter-hybrid-runtime install-containerd-config)"
        )
        self._install_node()
        self.progress("starting the smarter-cni agent and dnsmasq")
        self._start_cni()
        if self.config.device_manager:
            self.progress("starting smarter-device-manager against a kubelet stand-in")
            self._start_device_manager()
        self.progress("starting containerd (CRI) and importing the images")
        self._start_containerd()

    def _build_zipapps(self) -> None:
        result = subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "build_zipapps.py"),
                "--out",
                str(self.zipapps),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise GatewayError(f"building the zipapps failed: {result.stderr.strip()}")

    def _make_netns(self) -> None:
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        self._netns_made = True
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ip` inside the node's network namespace."""
        return subprocess.run(
            ["ip", "-n", self.netns, *args], check=check, capture_output=True, text=True
        )

    def _start_simulator(self) -> None:
        self.sim_root.mkdir(parents=True, exist_ok=True)
        started = self.processes.start(
            "simulator",
            [
                sys.executable,
                "-m",
                "sim",
                "up",
                "--root",
                self.sim_root,
                "--core",
                self.config.core,
            ],
            cwd=REPO,
        )
        self._simulator = started

        def ready() -> bool:
            return any(line.strip() == "ready" for line in _read_lines(started.log_path))

        try:
            self.processes.wait_for(started, ready, timeout=60, what="print `ready`")
        except SmarterError as error:
            raise GatewayError(f"simulator: {error}") from error

    @property
    def netconf(self) -> NetConf:
        """smarter-cni's view of the conflist: bridge, subnet, gateway, state and DNS paths."""
        from cni.config import load_conflist, parse

        return parse(load_conflist(self.conflist_path))

    @property
    def cni_state(self) -> Path:
        return self.node.path(self.netconf.state_dir)

    @property
    def dns_domain(self) -> str:
        return self.netconf.dns.domain

    @property
    def dns_server(self) -> str:
        """The bridge address in the node, where dnsmasq answers pods."""
        return str(self.netconf.gateway)

    def _install_node(self) -> None:
        """The node's containerd config and what the DaemonSets' init containers install."""
        distribution = self.config.containerd_config
        try:
            text = distribution.read_text()
        except OSError as error:
            raise GatewayError(
                f"cannot read the distribution's containerd config {distribution}: {error}"
            ) from error
        self.layout.config.parent.mkdir(parents=True, exist_ok=True)
        self.layout.config.write_text(text)
        node = containerd.discover(self.node)
        # The distribution's CNI plugins (Debian's containernetworking-plugins), where its
        # containerd looks for them.
        bin_dir = self.node.path(node.cni_bin_dir)
        bin_dir.mkdir(parents=True, exist_ok=True)
        for plugin in sorted(REFERENCE_PLUGINS.iterdir()):
            (bin_dir / plugin.name).symlink_to(plugin)
        # The CNI DaemonSet's init container: `smarter-cni install --host-root=/host ...`.
        self._run_installer(
            "smarter-cni install",
            [
                "cni",
                "install",
                f"--host-root={self.node_root}",
                f"--plugin={self.zipapps / 'smarter-cni'}",
                f"--conflist={PRODUCTION_CONFLIST}",
            ],
        )
        if not self.conflist_path.is_file():
            raise GatewayError(f"smarter-cni install did not write {self.conflist_path}")
        # The runtime DaemonSet's init container: install the binary by rename, then the config.
        self.runtime.parent.mkdir(parents=True, exist_ok=True)
        staged = self.runtime.with_name(f".{self.runtime.name}.new")
        shutil.copy2(self.zipapps / "smarter-hybrid-runtime", staged)
        staged.chmod(0o755)
        staged.rename(self.runtime)
        self._run_installer(
            "smarter-hybrid-runtime install-containerd-config",
            [
                "runtime_handler",
                "install-containerd-config",
                f"--host-root={self.node_root}",
                f"--binary={self.runtime}",
            ],
        )
        # What an operator writes for a node whose devices are the simulator's (docs/deploy.md):
        # the runtime's host root; smarter-cni's is the node's own directory here.
        if self.config.runtime_settings_in == "file":
            _write_settings(self.runtime, {RUNTIME_HOST_ROOT_ENV: str(self.sim_root)})
        _write_settings(
            self.node.path(node.cni_bin_dir) / "smarter-cni",
            {CNI_HOST_ROOT_ENV: str(self.node_root)},
        )

    def _run_installer(self, name: str, module_and_args: list[str]) -> None:
        """Run an installer as its DaemonSet does (its entry point, in the suite's image)."""
        result = subprocess.run(
            [sys.executable, "-m", *module_and_args],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        log_path = self.processes.log_dir / "installers.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as installers_log:
            installers_log.write(f"$ {name}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise GatewayError(
                f"{name} failed with status {result.returncode}",
                hint=(result.stderr or result.stdout).strip()[-2000:],
            )

    def _start_cni(self) -> None:
        # The DaemonSet's containers see the node's / at /host (SMARTER_HOST_ROOT).
        env = {**os.environ, HOST_ROOT_ENV: str(self.node_root)}
        # dnsmasq forwards other names to the node's resolvers, read from the node's
        # /etc/resolv.conf; the node directory gets the machine's.
        resolv_conf = self.node.path("/etc/resolv.conf")
        if not resolv_conf.exists():
            resolv_conf.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile("/etc/resolv.conf", resolv_conf)
        # containerd hands the plugin pod netns paths as it sees them (under its state dir); the
        # agent resolves every path under the node's root, as a DaemonSet that mounts the
        # node's / does. So the node's directory shows containerd's state dir at the same path.
        mirror = self.node.path(str(self.layout.state))
        mirror.parent.mkdir(parents=True, exist_ok=True)
        mirror.symlink_to(self.layout.state, target_is_directory=True)
        socket = self.node.path(self.netconf.socket_path)
        agent = self.processes.start(
            "smarter-cni-agent",
            [sys.executable, "-m", "cni", "agent", "--conf", PRODUCTION_CONFLIST],
            netns=self.netns,
            env=env,
            cwd=REPO,
        )
        try:
            self.processes.wait_for(agent, socket.exists, timeout=30, what=f"open {socket}")
        except SmarterError as error:
            raise GatewayError(f"smarter-cni agent: {error}") from error
        dns = self.processes.start(
            "dnsmasq",
            [sys.executable, "-m", "cni", "dns", "--conf", PRODUCTION_CONFLIST],
            netns=self.netns,
            env=env,
            cwd=REPO,
        )
        time.sleep(0.3)
        try:
            dns.check_alive()
        except SmarterError as error:
            raise GatewayError(f"smarter-cni dns: {error}") from error

    def _start_device_manager(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.kubelet = Kubelet(self.plugin_dir)
        self.kubelet.start()
        rules = self.work / "device-rules.yaml"
        rules.write_text(_device_rules())
        # As on a node whose devices are the simulator's (docs/smarter-sim.md): the host root
        # names the devices and sysfs; the kubelet's plugin directory is the node's own, the
        # device manager's default /var/lib/kubelet/device-plugins (here the node directory's
        # /var/lib, mounted on /var/lib for the device manager alone); the device paths it
        # hands over are real paths on this machine, where containerd opens them.
        command = [
            sys.executable,
            "-m",
            "device_plugin",
            "--host-root",
            str(self.sim_root),
            "--rules",
            str(rules),
            "--device-paths",
            "local",
        ]
        started = self.processes.start(
            "smarter-device-manager", _with_var_lib(self.node_var_lib, command), cwd=REPO
        )
        rproc0 = f"{RPROC_RESOURCE_PREFIX}0"

        def registered() -> bool:
            return rproc0 in self.resources()

        try:
            self.processes.wait_for(started, registered, timeout=30, what=f"register {rproc0}")
        except SmarterError as error:
            raise GatewayError(f"smarter-device-manager: {error}") from error

    def _start_containerd(self) -> None:
        if not overlay_works(self.work):
            self.snapshotter = "native"
        self.layout.pod_logs.mkdir(parents=True, exist_ok=True)
        node = containerd.discover(self.node)
        # The installers have run; now only what an operator also sets (paths, sandbox image).
        self.layout.config.write_text(
            operator_paths(
                self.layout.config.read_text(),
                self.layout,
                sandbox_image=image_build.PAUSE_IMAGE,
                cni_bin_dir=self.node.path(node.cni_bin_dir),
                cni_conf_dir=self.node.path(node.cni_conf_dir),
                snapshotter=self.snapshotter,
            )
        )
        env = {"PATH": SYSTEM_PATH, "HOME": "/root"}
        if self.config.runtime_settings_in == "environment":
            # The old leak's conditions: the shared variable and the runtime's own both in
            # containerd's environment, which every exec'd program inherits.
            env[RUNTIME_HOST_ROOT_ENV] = str(self.sim_root)
            env[HOST_ROOT_ENV] = str(self.sim_root)
        self.containerd = Containerd(self.layout, self.processes)
        self.containerd.start(netns=self.netns, env=env)
        self.cri = CriClient(self.layout.socket)
        assert self.images is not None
        for tarball in self.images.tarballs:
            self.containerd.import_image(tarball, self.snapshotter)
        self.cri.wait_ready(timeout=30)

    # Pods

    def pod_spec(
        self,
        name: str,
        *,
        handler: str = "",
        namespace: str = "default",
        annotations: Mapping[str, str] | None = None,
    ) -> PodSpec:
        uid = secrets.token_hex(8)
        log_directory = self.layout.pod_logs / f"{namespace}_{name}_{uid}"
        log_directory.mkdir(parents=True, exist_ok=True)
        return PodSpec(
            name=name,
            namespace=namespace,
            uid=uid,
            runtime_handler=handler,
            dns_servers=self.netconf.dns.nameservers,
            dns_searches=self.netconf.dns.search,
            log_directory=str(log_directory),
            labels={"app": app_name(name) or name},
            annotations=dict(annotations or {}),
        )

    def run_pod(
        self,
        name: str,
        *,
        handler: str = "",
        namespace: str = "default",
        annotations: Mapping[str, str] | None = None,
    ) -> Pod:
        """RunPodSandbox as the kubelet would: the pod's network comes from smarter-cni."""
        cri = self._cri()
        spec = self.pod_spec(name, handler=handler, namespace=namespace, annotations=annotations)
        pod_id = cri.run_pod(spec)
        pod = Pod(spec, pod_id, cri.pod_ip(pod_id))
        self.pods[pod_id] = pod
        return pod

    def start_container(
        self,
        pod: Pod,
        name: str,
        image: str,
        *,
        command: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        devices: Sequence[tuple[str, str, str]] = (),
        args: Sequence[str] = (),
    ) -> str:
        """CreateContainer + StartContainer; the container's ID."""
        cri = self._cri()
        spec = ContainerSpec(
            name=name,
            image=image,
            command=tuple(command),
            args=tuple(args),
            env=dict(env or {}),
            devices=tuple(devices),
            log_path=f"{name}/0.log",
        )
        container_id = cri.create_container(pod.id, pod.spec, spec)
        pod.containers[name] = container_id
        cri.start_container(container_id)
        return container_id

    def run_busybox_pod(self, name: str, allocation: Allocation | None = None) -> Pod:
        """A pod with one long-running busybox container named `main` (given `allocation`)."""
        pod = self.run_pod(name)
        self.start_container(
            pod,
            "main",
            image_build.BUSYBOX_IMAGE,
            command=["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
            env=allocation.env if allocation else None,
            devices=allocation.devices if allocation else (),
        )
        return pod

    def run_manifest_pod(self, manifest: Mapping[str, Any]) -> Pod:
        """A Pod manifest (deploy/examples/*.yaml) run as the kubelet runs it on this node.

        The RuntimeClass names the handler, each container's `smarter-devices/*` limits are
        allocated from the device manager, and its command, args and image are used as given.
        """
        metadata = manifest["metadata"]
        spec = manifest["spec"]
        runtime_class = spec.get("runtimeClassName")
        pod = self.run_pod(
            metadata["name"],
            handler=_runtime_handler(runtime_class) if runtime_class else "",
            namespace=metadata.get("namespace", "default"),
            annotations=metadata.get("annotations") or {},
        )
        for container in spec["containers"]:
            env: dict[str, str] = {}
            devices: list[tuple[str, str, str]] = []
            limits = container.get("resources", {}).get("limits", {})
            for resource, count in limits.items():
                if resource.startswith("smarter-devices/"):
                    allocation = self.allocate(resource, int(count))
                    env.update(allocation.env)
                    devices.extend(allocation.devices)
            env.update({item["name"]: item["value"] for item in container.get("env", [])})
            self.start_container(
                pod,
                container["name"],
                container["image"],
                command=container.get("command", ()),
                args=container.get("args", ()),
                env=env,
                devices=devices,
            )
        return pod

    def run_firmware_pod(
        self,
        name: str,
        firmware: str,
        allocation: Allocation,
        *,
        annotations: Mapping[str, str] | None = None,
    ) -> Pod:
        """A `hybrid` pod whose one container runs `firmware` on the core in `allocation`."""
        if self.images is None or firmware not in self.images.firmware:
            raise GatewayError(f"no firmware image {firmware!r} was built")
        pod = self.run_pod(name, handler=HYBRID_HANDLER, annotations=annotations)
        self.start_container(
            pod,
            "firmware",
            self.images.firmware[firmware],
            env=allocation.env,
            devices=allocation.devices,
        )
        return pod

    def container_log(self, pod: Pod, container: str) -> list[str]:
        """The container's output lines from its CRI log file (`<time> <stream> <tag> <text>`)."""
        lines: list[str] = []
        for raw in _read_lines(pod.log_directory / container / "0.log"):
            parts = raw.split(" ", 3)
            if len(parts) == 4:
                lines.append(parts[3])
        return lines

    def remove_pod(self, pod: Pod) -> None:
        """StopPodSandbox then RemovePodSandbox, as the kubelet does when a pod is deleted."""
        cri = self._cri()
        for container_id in pod.containers.values():
            try:
                cri.stop_container(container_id, timeout=5)
            except CriError as error:
                log.debug("stop container", container_id=container_id, error=str(error))
        cri.stop_pod(pod.id)
        cri.remove_pod(pod.id)
        self.pods.pop(pod.id, None)

    def remove_every_pod_named(self, name: str) -> None:
        """Remove the pods called `name` (e.g. one whose container was refused)."""
        for pod in [p for p in self.pods.values() if p.name == name]:
            self.remove_pod(pod)

    def remove_every_pod(self) -> None:
        """Remove every sandbox containerd knows, also ones a failed test left behind."""
        if self.cri is None:
            return
        for item in self.cri.list_pods():
            try:
                for container in self.cri.list_containers(item.id):
                    try:
                        self.cri.stop_container(container.id, timeout=2)
                    except CriError as error:
                        log.debug("stop container", error=str(error))
                self.cri.stop_pod(item.id)
                self.cri.remove_pod(item.id)
            except CriError as error:
                log.warning("removing pod failed", pod_id=item.id, error=str(error))
        self.pods.clear()

    def _cri(self) -> CriClient:
        if self.cri is None:
            raise GatewayError("containerd is not running")
        return self.cri

    # Devices

    def resources(self) -> dict[str, list[str]]:
        """Resource name -> healthy device IDs, as the kubelet stand-in sees them advertised."""
        if self.kubelet is None:
            return {}
        advertised: dict[str, list[str]] = {}
        for name in sorted(self.kubelet.registered()):
            devices = self.kubelet.devices(name) or []
            advertised[str(name)] = [str(d.ID) for d in devices if d.health == "Healthy"]
        return advertised

    def allocate(self, resource: str, count: int = 1) -> Allocation:
        """Allocate `count` devices of `resource` via the device manager, as the kubelet does."""
        if self.kubelet is None:
            raise GatewayError("the device manager is not running in this gateway")
        available = self.resources().get(resource, [])
        if len(available) < count:
            raise GatewayError(f"{resource} advertises {available}, not {count} device(s)")
        device_ids = tuple(available[:count])
        response = self.kubelet.allocate(resource, list(device_ids)).container_responses[0]
        envs = dict(response.envs)
        # `--device-paths local`: the paths are the ones containerd opens on this machine.
        devices = tuple(
            (str(d.container_path), str(d.host_path), str(d.permissions)) for d in response.devices
        )
        return Allocation(resource, device_ids, envs, devices)

    # What is left

    def core_states(self) -> dict[str, str]:
        """remoteprocN -> state, read from the simulated host's sysfs."""
        states: dict[str, str] = {}
        base = self.sim_root / "sys" / "class" / "remoteproc"
        for core in sorted(base.glob("remoteproc*")):
            try:
                states[core.name] = (core / "state").read_text().strip()
            except OSError as error:
                states[core.name] = f"unreadable: {error}"
        return states

    def log_of(self, program: str) -> str:
        """The output of a program the gateway started (`smarter-cni-agent`, `containerd`...)."""
        return "\n".join(_read_lines(self.processes.log_dir / f"{program}.log"))

    def leases(self) -> list[str]:
        """Addresses smarter-cni has leased (one file per address)."""
        return [p.name for p in _visible_files(self.cni_state / "leases")]

    def dns_records(self) -> list[str]:
        """Container IDs with a hosts record in the directory dnsmasq serves."""
        return [p.name for p in _visible_files(self.node.path(self.netconf.dns.hosts_dir))]

    def firmware_records(self) -> list[str]:
        """Container IDs the hybrid runtime keeps a firmware record for (under runc's --root)."""
        return [p.name for p in _visible_files(self.layout.runc_root / "k8s.io" / "smarter-hybrid")]

    def runc_containers(self) -> list[str]:
        """Container IDs runc keeps state for under the shim's --root."""
        root = self.layout.runc_root / "k8s.io"
        return [p.name for p in _visible_files(root) if p.name != "smarter-hybrid"]

    def leftovers(self) -> list[str]:
        """Everything pods may leave behind that is still here (empty once all pods are gone)."""
        from smarter_common.locks import is_locked

        found: list[str] = []
        found.extend(f"address lease {address}" for address in self.leases())
        found.extend(f"DNS record {container}" for container in self.dns_records())
        veths = self.ip("-o", "link", "show", "type", "veth", check=False).stdout.strip()
        found.extend(f"veth {line.split(':')[1].strip()}" for line in veths.splitlines() if line)
        for run in (self.node.run, self.host.run):
            if run.is_dir():
                found.extend(f"held lock {p}" for p in sorted(run.rglob("*.lock")) if is_locked(p))
        found.extend(f"runc state {container}" for container in self.runc_containers())
        found.extend(f"firmware record {container}" for container in self.firmware_records())
        found.extend(f"firmware file {path}" for path in self.firmware_copies())
        for name, state in self.core_states().items():
            if state not in ("offline", "crashed"):
                found.append(f"core {name} is {state}")
        found.extend(f"QEMU process {pid}" for pid in self.qemu_pids())
        found.extend(f"mount {p}" for p in mounts_under(self.layout.state))
        if self.cri is not None:
            found.extend(f"sandbox {item.metadata.name}" for item in self.cri.list_pods())
        return found

    def firmware_copies(self) -> list[Path]:
        """Firmware files the runtime placed for its containers where remoteproc loads them."""
        from runtime_handler.firmware import FIRMWARE_PREFIX, firmware_dir

        directory = firmware_dir(self.host)
        return sorted(directory.glob(f"{FIRMWARE_PREFIX}*")) if directory.is_dir() else []

    def qemu_pids(self) -> list[int]:
        """QEMU processes running this gateway's cores."""
        return _pids_with(b"qemu-system", str(self.sim_root).encode())

    def runtime_executables(self) -> dict[int, str]:
        """PID -> interpreter of each running process of the hybrid runtime's zipapp."""
        found: dict[int, str] = {}
        for pid in _pids_with(b"", str(self.runtime).encode()):
            try:
                found[pid] = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
        return found

    # Teardown

    def close(self) -> None:
        """Remove every pod, stop every process, unmount, delete the netns and the work dir."""
        if self._closed:
            return
        self._closed = True
        steps: list[tuple[str, Callable[[], None]]] = [
            ("remove pods", self.remove_every_pod),
            ("close CRI", lambda: self.cri.close() if self.cri else None),
            ("stop containerd", lambda: self.containerd.stop() if self.containerd else None),
            ("delete orphaned containers", self._delete_orphans),
            ("stop kubelet stand-in", self._stop_kubelet),
            ("stop processes", self.processes.stop_all),
            ("unmount", lambda: _ignore(unmount_all(self.work))),
            ("delete netns", self._delete_netns),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as error:  # teardown goes on whatever one step does
                log.warning("teardown step failed", step=what, error=str(error))
        if not self.config.keep_work_dir:
            shutil.rmtree(self.work, ignore_errors=True)

    def _delete_orphans(self) -> None:
        """Containers whose shim is gone (containerd died mid-way): delete them as a shim would."""
        root = str(self.layout.runc_root / "k8s.io")
        # The installed runtime reads its settings file, as when the shim calls it.
        env = {"PATH": SYSTEM_PATH}
        if self.config.runtime_settings_in == "environment":
            env[RUNTIME_HOST_ROOT_ENV] = str(self.sim_root)
        runtime = str(self.runtime)
        runc = shutil.which("runc") or "/usr/sbin/runc"
        for container_id in self.firmware_records():
            log.warning("deleting orphaned firmware container", container_id=container_id)
            subprocess.run(
                [runtime, "--root", root, "delete", "--force", container_id],
                capture_output=True,
                env=env,
                timeout=60,
            )
        for container_id in self.runc_containers():
            log.warning("deleting orphaned container", container_id=container_id)
            subprocess.run(
                [runc, "--root", root, "delete", "--force", container_id],
                capture_output=True,
                timeout=60,
            )

    def _stop_kubelet(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
            self.kubelet = None

    def _delete_netns(self) -> None:
        if not self._netns_made:
            return
        pids = subprocess.run(
            ["ip", "netns", "pids", self.netns], capture_output=True, text=True
        ).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                continue
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
        self._netns_made = False


def _runtime_handler(runtime_class: str) -> str:
    """The containerd handler of the RuntimeClass `runtime_class` (deploy/runtime's)."""
    import yaml

    declared = yaml.safe_load(RUNTIME_CLASS.read_text())
    if declared["metadata"]["name"] != runtime_class:
        raise GatewayError(
            f"RuntimeClass {runtime_class!r} does not exist on this gateway",
            hint=f"use {declared['metadata']['name']!r} ({RUNTIME_CLASS.relative_to(REPO)})",
        )
    return str(declared["handler"])


def _write_settings(executable: Path, settings: Mapping[str, str]) -> Path:
    """`<executable>.conf`: the exec'd program's own settings, one `NAME=value` a line."""
    path = executable.with_name(executable.name + SETTINGS_SUFFIX)
    lines = [f"# {executable.name}'s settings on this simulated gateway (testbed.gateway)"]
    lines.extend(f"{name}={value}" for name, value in settings.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def _with_var_lib(var_lib: Path, command: Sequence[str]) -> list[str]:
    """`command` in a mount namespace of its own where `var_lib` is mounted on /var/lib.

    The machine's /var/lib is untouched; the namespace goes when the process does.
    """
    script = 'mount --bind "$0" /var/lib && exec "$@"'
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        str(var_lib),
        *command,
    ]


def _device_rules() -> str:
    """The rules of the device manager's DaemonSet (its ConfigMap's conf.yaml)."""
    import yaml

    configmap = yaml.safe_load(PRODUCTION_RULES.read_text())
    return str(configmap["data"]["conf.yaml"])


def _pids_with(program: bytes, argument: bytes) -> list[int]:
    """PIDs whose argv[0] contains `program` and whose command line contains `argument`."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if program in cmdline.split(b"\0", 1)[0] and argument in cmdline:
            pids.append(int(entry.name))
    return pids


def _visible_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _ignore(_: object) -> None:
    return None
