"""Pods on the simulated gateway, run and removed over CRI as the kubelet does it."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cni.names import app_name
from smarter_common.logs import get_logger
from testbed.containerd import HYBRID_HANDLER
from testbed.cri.client import ContainerSpec, CriClient, CriError, PodSpec
from testbed.devices import Allocation
from testbed.images import BUSYBOX_IMAGE
from testbed.layout import REPO, RUNTIME_CLASS, GatewayError
from testbed.processes import read_lines

if TYPE_CHECKING:
    from cni.config import NetConf

log = get_logger("testbed.pods")

Allocate = Callable[[str, int], Allocation]


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


class PodClient:
    """The kubelet's pod operations against one containerd; keeps the pods it ran by ID."""

    def __init__(
        self,
        cri: CriClient,
        *,
        pod_logs: Path,
        netconf: NetConf,
        firmware_images: Mapping[str, str],
        allocate: Allocate,
    ) -> None:
        self.cri = cri
        self.pod_logs = pod_logs
        self.netconf = netconf
        self.firmware_images = firmware_images
        self.allocate = allocate
        self.pods: dict[str, Pod] = {}

    def pod_spec(
        self,
        name: str,
        *,
        handler: str = "",
        namespace: str = "default",
        annotations: Mapping[str, str] | None = None,
    ) -> PodSpec:
        uid = secrets.token_hex(8)
        log_directory = self.pod_logs / f"{namespace}_{name}_{uid}"
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
        spec = self.pod_spec(name, handler=handler, namespace=namespace, annotations=annotations)
        pod_id = self.cri.run_pod(spec)
        pod = Pod(spec, pod_id, self.cri.pod_ip(pod_id))
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
        spec = ContainerSpec(
            name=name,
            image=image,
            command=tuple(command),
            args=tuple(args),
            env=dict(env or {}),
            devices=tuple(devices),
            log_path=f"{name}/0.log",
        )
        container_id = self.cri.create_container(pod.id, pod.spec, spec)
        pod.containers[name] = container_id
        self.cri.start_container(container_id)
        return container_id

    def run_busybox_pod(self, name: str, allocation: Allocation | None = None) -> Pod:
        """A pod with one long-running busybox container named `main` (given `allocation`)."""
        pod = self.run_pod(name)
        self.start_container(
            pod,
            "main",
            BUSYBOX_IMAGE,
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
            handler=runtime_handler(runtime_class) if runtime_class else "",
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
        if firmware not in self.firmware_images:
            raise GatewayError(f"no firmware image {firmware!r} was built")
        pod = self.run_pod(name, handler=HYBRID_HANDLER, annotations=annotations)
        self.start_container(
            pod,
            "firmware",
            self.firmware_images[firmware],
            env=allocation.env,
            devices=allocation.devices,
        )
        return pod

    def remove_pod(self, pod: Pod) -> None:
        """StopPodSandbox then RemovePodSandbox, as the kubelet does when a pod is deleted."""
        for container_id in pod.containers.values():
            try:
                self.cri.stop_container(container_id, timeout=5)
            except CriError as error:
                log.debug("stop_container_failed", container_id=container_id, error=str(error))
        self.cri.stop_pod(pod.id)
        self.cri.remove_pod(pod.id)
        self.pods.pop(pod.id, None)

    def remove_every_pod_named(self, name: str) -> None:
        """Remove the pods called `name` (e.g. one whose container was refused)."""
        for pod in [p for p in self.pods.values() if p.name == name]:
            self.remove_pod(pod)

    def remove_every_pod(self) -> None:
        """Remove every sandbox containerd knows, also ones a failed test left behind."""
        for item in self.cri.list_pods():
            try:
                for container in self.cri.list_containers(item.id):
                    try:
                        self.cri.stop_container(container.id, timeout=2)
                    except CriError as error:
                        log.debug("stop_container_failed", error=str(error))
                self.cri.stop_pod(item.id)
                self.cri.remove_pod(item.id)
            except CriError as error:
                log.warning("remove_pod_failed", pod_id=item.id, error=str(error))
        self.pods.clear()


def container_log(pod: Pod, container: str) -> list[str]:
    """The container's output lines from its CRI log file (`<time> <stream> <tag> <text>`)."""
    lines: list[str] = []
    for raw in read_lines(pod.log_directory / container / "0.log"):
        parts = raw.split(" ", 3)
        if len(parts) == 4:
            lines.append(parts[3])
    return lines


def runtime_handler(runtime_class: str) -> str:
    """The containerd handler of the RuntimeClass `runtime_class` (deploy/runtime's)."""
    import yaml

    declared = yaml.safe_load(RUNTIME_CLASS.read_text())
    if declared["metadata"]["name"] != runtime_class:
        raise GatewayError(
            f"RuntimeClass {runtime_class!r} does not exist on this gateway",
            hint=f"use {declared['metadata']['name']!r} ({RUNTIME_CLASS.relative_to(REPO)})",
        )
    return str(declared["handler"])
