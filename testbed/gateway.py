"""A whole simulated gateway: a node network namespace, containerd, and the three programs.

`Gateway` is the one handle the demo, the tests and the benchmarks hold; each responsibility
lives in a module of its own: where things are (testbed.layout), bringing the node up as a
real one is installed (testbed.bringup), pods over CRI (testbed.pods), devices through the
kubelet stand-in (testbed.devices), what is there to see and what is left behind
(testbed.inspection), and taking it all down (testbed.teardown). The host's network
namespace is never touched. Everything started is stopped by PID, and every namespace and
mount removed, on the way out, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim.mounts import detach_all
from smarter_common.hostroot import HostRoot
from testbed import bringup, devices, inspection, teardown
from testbed import images as image_build
from testbed.containerd import Containerd, ContainerdLayout
from testbed.cri.client import CriClient
from testbed.devices import Allocation
from testbed.kubelet import Kubelet
from testbed.layout import (
    PRODUCTION_CONFLIST,
    REPO,
    RPROC_RESOURCE_PREFIX,
    GatewayConfig,
    GatewayError,
    GatewayPaths,
    Progress,
    quiet,
)
from testbed.pods import Pod, PodClient, container_log
from testbed.processes import Processes, Started

if TYPE_CHECKING:
    from cni.config import NetConf

__all__ = [
    "PRODUCTION_CONFLIST",
    "REPO",
    "RPROC_RESOURCE_PREFIX",
    "Allocation",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "Pod",
]


class Gateway:
    """A simulated gateway, brought up by `start()` (or `with`), torn down by `close()`."""

    def __init__(self, config: GatewayConfig | None = None, progress: Progress = quiet) -> None:
        self.config = config or GatewayConfig()
        self.progress = progress
        self.paths = GatewayPaths.create(self.config.work_parent)
        self.processes = Processes(self.paths.logs)
        self.images: image_build.Images | None = None
        self.containerd: Containerd | None = None
        self.cri: CriClient | None = None
        self.kubelet: Kubelet | None = None
        self.snapshotter = "overlayfs"
        self._pod_client: PodClient | None = None
        self._netns_made = False
        self._simulator: Started | None = None
        self._closed = False

    # Where things are (testbed.layout)

    @property
    def work(self) -> Path:
        return self.paths.work

    @property
    def netns(self) -> str:
        return self.paths.netns

    @property
    def sim_root(self) -> Path:
        return self.paths.sim_root

    @property
    def host(self) -> HostRoot:
        return self.paths.host

    @property
    def node_root(self) -> Path:
        return self.paths.node_root

    @property
    def node(self) -> HostRoot:
        return self.paths.node

    @property
    def layout(self) -> ContainerdLayout:
        return self.paths.containerd

    @property
    def plugin_dir(self) -> Path:
        return self.paths.plugin_dir

    @property
    def conflist_path(self) -> Path:
        return self.paths.conflist

    @property
    def runtime(self) -> Path:
        return self.paths.runtime

    @property
    def bundle(self) -> Path:
        return self.paths.bundle

    @property
    def netconf(self) -> NetConf:
        """smarter-cni's view of the conflist: bridge, subnet, gateway, state and DNS paths."""
        return self.paths.netconf()

    @property
    def dns_server(self) -> str:
        """The bridge address in the node, where dnsmasq answers pods."""
        return str(self.netconf.gateway)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ip` inside the node's network namespace."""
        return bringup.ip(self.netns, *args, check=check)

    # Bring-up (testbed.bringup)

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
        self.progress(
            "building the host-side bundle (smarter-cni, smarter-hybrid-runtime, their python)"
        )
        bringup.build_bundle(self.bundle)
        self.progress("building images: pause, busybox, firmware for the " + self.config.core)
        self.images = image_build.build_images(
            self.paths.images, core=self.config.core, firmware=self.config.firmware
        )
        bringup.share_work_directory(self.paths)
        self.progress(f"creating the node's network namespace {self.netns}")
        bringup.add_netns(self.netns)
        self._netns_made = True
        self.ip("link", "set", "lo", "up")
        self.progress("starting the simulator (remote cores over FUSE, QEMU on start)")
        self._simulator = bringup.start_simulator(
            self.paths, self.processes, self.config.core, count=self.config.cores
        )
        self.progress(
            f"installing the node: {self.config.containerd_config.name}, then the installers"
            " (smarter-cni install, smarter-hybrid-runtime install-containerd-config)"
        )
        bringup.install_node(self.paths, self.config, self.processes.log_dir / "installers.log")
        self.progress("starting the smarter-cni agent and dnsmasq")
        bringup.start_cni(self.paths, self.processes)
        if self.config.device_manager:
            self.progress("starting smarter-device-manager against a kubelet stand-in")
            self.paths.plugin_dir.mkdir(parents=True, exist_ok=True)
            self.kubelet = Kubelet(self.paths.plugin_dir)
            self.kubelet.start()
            devices.start_device_manager(self.kubelet, self.paths, self.processes)
        self.progress("starting containerd (CRI) and importing the images")
        self._start_containerd()

    def _start_containerd(self) -> None:
        self.snapshotter = bringup.configure_containerd(self.paths)
        self.containerd = Containerd(self.layout, self.processes)
        self.containerd.start(
            netns=self.netns,
            env=bringup.containerd_environment(self.paths, self.config),
            wrapper=bringup.containerd_wrapper(self.paths),
        )
        self.cri = CriClient(self.layout.socket)
        assert self.images is not None
        self._pod_client = PodClient(
            self.cri,
            pod_logs=self.layout.pod_logs,
            netconf=self.netconf,
            firmware_images=self.images.firmware,
            allocate=self.allocate,
        )
        for tarball in self.images.tarballs:
            self.containerd.import_image(tarball, self.snapshotter)
        self.cri.wait_ready(timeout=30)

    # Pods (testbed.pods)

    @property
    def pods(self) -> dict[str, Pod]:
        """The pods this gateway ran and has not removed, by sandbox ID."""
        return self._pod_client.pods if self._pod_client else {}

    def _pods(self) -> PodClient:
        if self._pod_client is None:
            raise GatewayError("containerd is not running")
        return self._pod_client

    def run_pod(
        self,
        name: str,
        *,
        handler: str = "",
        namespace: str = "default",
        annotations: Mapping[str, str] | None = None,
    ) -> Pod:
        """RunPodSandbox as the kubelet would: the pod's network comes from smarter-cni."""
        return self._pods().run_pod(
            name, handler=handler, namespace=namespace, annotations=annotations
        )

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
        return self._pods().start_container(
            pod, name, image, command=command, env=env, devices=devices, args=args
        )

    def run_busybox_pod(self, name: str, allocation: Allocation | None = None) -> Pod:
        """A pod with one long-running busybox container named `main` (given `allocation`)."""
        return self._pods().run_busybox_pod(name, allocation)

    def run_manifest_pod(self, manifest: Mapping[str, Any]) -> Pod:
        """A Pod manifest (deploy/examples/*.yaml) run as the kubelet runs it on this node."""
        return self._pods().run_manifest_pod(manifest)

    def run_firmware_pod(
        self,
        name: str,
        firmware: str,
        allocation: Allocation,
        *,
        annotations: Mapping[str, str] | None = None,
    ) -> Pod:
        """A `hybrid` pod whose one container runs `firmware` on the core in `allocation`."""
        return self._pods().run_firmware_pod(name, firmware, allocation, annotations=annotations)

    def container_log(self, pod: Pod, container: str) -> list[str]:
        """The container's output lines from its CRI log file."""
        return container_log(pod, container)

    def remove_pod(self, pod: Pod) -> None:
        """StopPodSandbox then RemovePodSandbox, as the kubelet does when a pod is deleted."""
        self._pods().remove_pod(pod)

    def remove_every_pod_named(self, name: str) -> None:
        """Remove the pods called `name` (e.g. one whose container was refused)."""
        self._pods().remove_every_pod_named(name)

    def remove_every_pod(self) -> None:
        """Remove every sandbox containerd knows, also ones a failed test left behind."""
        if self._pod_client is not None:
            self._pod_client.remove_every_pod()

    # Devices (testbed.devices)

    def resources(self) -> dict[str, list[str]]:
        """Resource name -> healthy device IDs, as the kubelet stand-in sees them advertised."""
        return devices.advertised(self.kubelet) if self.kubelet is not None else {}

    def allocate(self, resource: str, count: int = 1) -> Allocation:
        """Allocate `count` devices of `resource` via the device manager, as the kubelet does."""
        if self.kubelet is None:
            raise GatewayError("the device manager is not running in this gateway")
        return devices.allocate(self.kubelet, resource, count)

    # What is there and what is left (testbed.inspection)

    def core_states(self) -> dict[str, str]:
        """remoteprocN -> state, read from the simulated host's sysfs."""
        return inspection.core_states(self.paths)

    def log_of(self, program: str) -> str:
        """The output of a program the gateway started (`smarter-cni-agent`, `containerd`...)."""
        return inspection.log_of(self.paths, program)

    def leases(self) -> list[str]:
        return inspection.leases(self.paths)

    def dns_records(self) -> list[str]:
        return inspection.dns_records(self.paths)

    def firmware_records(self) -> list[str]:
        return inspection.firmware_records(self.paths)

    def runc_containers(self) -> list[str]:
        return inspection.runc_containers(self.paths)

    def firmware_copies(self) -> list[Path]:
        return inspection.firmware_copies(self.paths)

    def qemu_pids(self) -> list[int]:
        return inspection.qemu_pids(self.paths)

    def runtime_executables(self) -> dict[int, str]:
        return inspection.runtime_executables(self.paths)

    def leftovers(self) -> list[str]:
        """Everything pods may leave behind that is still here (empty once all pods are gone)."""
        found = inspection.leftovers(self.paths)
        if self.cri is not None:
            found.extend(f"sandbox {item.metadata.name}" for item in self.cri.list_pods())
        return found

    # Teardown (testbed.teardown)

    def close(self) -> None:
        """Remove every pod, stop every process, unmount, delete the netns and the work dir."""
        if self._closed:
            return
        self._closed = True
        teardown.run_steps(
            [
                ("remove pods", self.remove_every_pod),
                ("close CRI", lambda: self.cri.close() if self.cri else None),
                ("stop containerd", lambda: self.containerd.stop() if self.containerd else None),
                (
                    "delete orphaned containers",
                    lambda: teardown.delete_orphans(
                        self.paths,
                        runtime_wrapper=bringup.containerd_wrapper(self.paths),
                        runtime_env=bringup.containerd_environment(self.paths, self.config),
                    ),
                ),
                ("stop kubelet stand-in", self._stop_kubelet),
                ("stop processes", self.processes.stop_all),
                ("unmount", lambda: _ignore(detach_all(self.work))),
                ("delete netns", self._delete_netns),
            ]
        )
        if not self.config.keep_work_dir:
            shutil.rmtree(self.work, ignore_errors=True)

    def _stop_kubelet(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
            self.kubelet = None

    def _delete_netns(self) -> None:
        if self._netns_made:
            teardown.delete_netns(self.netns)
            self._netns_made = False


def _ignore(_: object) -> None:
    return None
