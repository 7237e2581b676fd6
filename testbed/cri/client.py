"""A CRI client that speaks to a runtime's socket as the kubelet does."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smarter_common.deadline import Deadline
from smarter_common.errors import SmarterError
from testbed.cri import load

# CRI messages are generated at run time; they are typed as Any here.
Message = Any


class CriError(SmarterError):
    """A CRI call failed; the runtime's own message is kept whole."""

    def __init__(self, call: str, details: str, code: str) -> None:
        super().__init__(f"{call} failed ({code}): {details}")
        self.call = call
        self.details = details
        self.code = code


@dataclass(frozen=True)
class PodSpec:
    """What the kubelet would put in a PodSandboxConfig for one pod."""

    name: str
    namespace: str = "default"
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    runtime_handler: str = ""
    dns_servers: Sequence[str] = ()
    dns_searches: Sequence[str] = ()
    log_directory: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerSpec:
    """What the kubelet would put in a ContainerConfig for one container."""

    name: str
    image: str
    command: Sequence[str] = ()
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    devices: Sequence[tuple[str, str, str]] = ()  # (container path, host path, permissions)
    log_path: str = ""


class CriClient:
    """RuntimeService and ImageService calls over a unix socket."""

    def __init__(self, socket: Path, *, timeout: float = 60.0) -> None:
        import grpc

        self.api, stubs = load()
        self._grpc = grpc
        self._channel = grpc.insecure_channel(f"unix://{socket}")
        self._runtime = stubs.RuntimeServiceStub(self._channel)
        self._images = stubs.ImageServiceStub(self._channel)
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, service: Any, method: str, request: Message, timeout: float | None) -> Any:
        try:
            return getattr(service, method)(request, timeout=timeout or self.timeout)
        except self._grpc.RpcError as error:
            raise CriError(method, error.details() or "", error.code().name) from error

    # Runtime

    def version(self) -> Message:
        return self._call(self._runtime, "Version", self.api.VersionRequest(version="v1"), 5)

    def status(self) -> Message:
        return self._call(self._runtime, "Status", self.api.StatusRequest(), 5)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the runtime reports RuntimeReady and NetworkReady (its CNI config loaded)."""
        deadline = Deadline(timeout)
        last = "no answer"
        while not deadline.expired():
            try:
                conditions = {c.type: c for c in self.status().status.conditions}
            except CriError as error:
                last = str(error)
            else:
                missing = [
                    c
                    for c in ("RuntimeReady", "NetworkReady")
                    if not conditions.get(c) or not conditions[c].status
                ]
                if not missing:
                    return
                last = "; ".join(
                    f"{name}: {conditions[name].reason} {conditions[name].message}".strip()
                    if name in conditions
                    else f"{name}: missing"
                    for name in missing
                )
            deadline.sleep(0.2)
        raise SmarterError(f"the CRI runtime did not become ready in {timeout:.0f}s: {last}")

    def sandbox_config(self, pod: PodSpec) -> Message:
        api = self.api
        return api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(
                name=pod.name, namespace=pod.namespace, uid=pod.uid or f"uid-{pod.name}"
            ),
            hostname=pod.name,
            log_directory=pod.log_directory,
            dns_config=api.DNSConfig(
                servers=list(pod.dns_servers), searches=list(pod.dns_searches), options=["ndots:1"]
            )
            if pod.dns_servers
            else None,
            labels=dict(pod.labels),
            annotations=dict(pod.annotations),
            linux=api.LinuxPodSandboxConfig(
                security_context=api.LinuxSandboxSecurityContext(
                    namespace_options=api.NamespaceOption(network=api.POD, pid=api.CONTAINER)
                )
            ),
        )

    def run_pod(self, pod: PodSpec, timeout: float | None = None) -> str:
        request = self.api.RunPodSandboxRequest(
            config=self.sandbox_config(pod), runtime_handler=pod.runtime_handler
        )
        return str(self._call(self._runtime, "RunPodSandbox", request, timeout).pod_sandbox_id)

    def stop_pod(self, pod_id: str) -> None:
        self._call(
            self._runtime,
            "StopPodSandbox",
            self.api.StopPodSandboxRequest(pod_sandbox_id=pod_id),
            None,
        )

    def remove_pod(self, pod_id: str) -> None:
        self._call(
            self._runtime,
            "RemovePodSandbox",
            self.api.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
            None,
        )

    def pod_status(self, pod_id: str, *, verbose: bool = False) -> Message:
        request = self.api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose)
        return self._call(self._runtime, "PodSandboxStatus", request, None)

    def pod_ip(self, pod_id: str) -> str:
        return str(self.pod_status(pod_id).status.network.ip)

    def list_pods(self) -> list[Message]:
        response = self._call(
            self._runtime, "ListPodSandbox", self.api.ListPodSandboxRequest(), None
        )
        return list(response.items)

    def create_container(self, pod_id: str, pod: PodSpec, container: ContainerSpec) -> str:
        api = self.api
        config = api.ContainerConfig(
            metadata=api.ContainerMetadata(name=container.name),
            image=api.ImageSpec(image=container.image),
            command=list(container.command),
            args=list(container.args),
            envs=[api.KeyValue(key=k, value=v) for k, v in container.env.items()],
            devices=[
                api.Device(container_path=c, host_path=h, permissions=p)
                for c, h, p in container.devices
            ],
            log_path=container.log_path,
            labels={"io.kubernetes.container.name": container.name},
            # As the kubelet sets it for a pod without shareProcessNamespace: each container
            # has its own PID namespace, its first process is PID 1.
            linux=api.LinuxContainerConfig(
                security_context=api.LinuxContainerSecurityContext(
                    namespace_options=api.NamespaceOption(
                        network=api.POD, pid=api.CONTAINER, ipc=api.POD
                    )
                )
            ),
        )
        request = api.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=self.sandbox_config(pod)
        )
        return str(self._call(self._runtime, "CreateContainer", request, None).container_id)

    def start_container(self, container_id: str) -> None:
        request = self.api.StartContainerRequest(container_id=container_id)
        self._call(self._runtime, "StartContainer", request, None)

    def stop_container(self, container_id: str, timeout: int = 10) -> None:
        request = self.api.StopContainerRequest(container_id=container_id, timeout=timeout)
        self._call(self._runtime, "StopContainer", request, timeout + self.timeout)

    def remove_container(self, container_id: str) -> None:
        request = self.api.RemoveContainerRequest(container_id=container_id)
        self._call(self._runtime, "RemoveContainer", request, None)

    def container_status(self, container_id: str) -> Message:
        request = self.api.ContainerStatusRequest(container_id=container_id)
        return self._call(self._runtime, "ContainerStatus", request, None).status

    def list_containers(self, pod_id: str = "") -> list[Message]:
        request = self.api.ListContainersRequest(
            filter=self.api.ContainerFilter(pod_sandbox_id=pod_id)
        )
        return list(self._call(self._runtime, "ListContainers", request, None).containers)

    def exec_sync(
        self, container_id: str, command: Sequence[str], timeout: int = 20
    ) -> tuple[int, str, str]:
        """Run `command` in the container; (exit code, stdout, stderr)."""
        request = self.api.ExecSyncRequest(
            container_id=container_id, cmd=list(command), timeout=timeout
        )
        response = self._call(self._runtime, "ExecSync", request, timeout + 10)
        return (
            int(response.exit_code),
            bytes(response.stdout).decode(errors="replace"),
            bytes(response.stderr).decode(errors="replace"),
        )

    def wait_container_exited(self, container_id: str, timeout: float = 30.0) -> Message:
        deadline = Deadline(timeout)
        while True:
            status = self.container_status(container_id)
            if status.state == self.api.CONTAINER_EXITED:
                return status
            if deadline.expired():
                raise SmarterError(
                    f"container {container_id[:12]} still "
                    f"{self.api.ContainerState.Name(status.state)} after {timeout:.0f}s"
                )
            time.sleep(0.2)

    # Images

    def image_tags(self) -> list[str]:
        response = self._call(self._images, "ListImages", self.api.ListImagesRequest(), None)
        return sorted(tag for image in response.images for tag in image.repo_tags)
