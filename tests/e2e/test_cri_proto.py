"""Our CRI subset is wire-compatible with the published k8s.io/cri-api runtime.v1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testbed import cri

# Field numbers as published in k8s.io/cri-api pkg/apis/runtime/v1/api.proto.
PUBLISHED = {
    "PodSandboxMetadata": {"name": 1, "uid": 2, "namespace": 3, "attempt": 4},
    "PodSandboxConfig": {
        "metadata": 1,
        "hostname": 2,
        "log_directory": 3,
        "dns_config": 4,
        "port_mappings": 5,
        "labels": 6,
        "annotations": 7,
        "linux": 8,
    },
    "RunPodSandboxRequest": {"config": 1, "runtime_handler": 2},
    "PodSandboxStatus": {
        "id": 1,
        "metadata": 2,
        "state": 3,
        "created_at": 4,
        "network": 5,
        "linux": 6,
        "labels": 7,
        "annotations": 8,
        "runtime_handler": 9,
    },
    "LinuxSandboxSecurityContext": {
        "namespace_options": 1,
        "run_as_user": 3,
        "readonly_rootfs": 4,
        "privileged": 6,
    },
    "ContainerConfig": {
        "metadata": 1,
        "image": 2,
        "command": 3,
        "args": 4,
        "working_dir": 5,
        "envs": 6,
        "mounts": 7,
        "devices": 8,
        "labels": 9,
        "annotations": 10,
        "log_path": 11,
        "stdin": 12,
        "stdin_once": 13,
        "tty": 14,
        "linux": 15,
    },
    "CreateContainerRequest": {"pod_sandbox_id": 1, "config": 2, "sandbox_config": 3},
    "ContainerStatus": {
        "id": 1,
        "metadata": 2,
        "state": 3,
        "created_at": 4,
        "started_at": 5,
        "finished_at": 6,
        "exit_code": 7,
        "image": 8,
        "image_ref": 9,
        "reason": 10,
        "message": 11,
        "labels": 12,
        "annotations": 13,
        "mounts": 14,
        "log_path": 15,
    },
    "ExecSyncRequest": {"container_id": 1, "cmd": 2, "timeout": 3},
    "ExecSyncResponse": {"stdout": 1, "stderr": 2, "exit_code": 3},
    "StopContainerRequest": {"container_id": 1, "timeout": 2},
    "Device": {"container_path": 1, "host_path": 2, "permissions": 3},
    "KeyValue": {"key": 1, "value": 2},
}
ENUMS = {
    "ContainerState": {
        "CONTAINER_CREATED": 0,
        "CONTAINER_RUNNING": 1,
        "CONTAINER_EXITED": 2,
        "CONTAINER_UNKNOWN": 3,
    },
    "PodSandboxState": {"SANDBOX_READY": 0, "SANDBOX_NOTREADY": 1},
    "NamespaceMode": {"POD": 0, "CONTAINER": 1, "NODE": 2, "TARGET": 3},
}


@pytest.fixture(scope="module")
def api() -> Any:
    messages, _ = cri.load()
    return messages


def test_package_is_runtime_v1(api: Any) -> None:
    assert api.DESCRIPTOR.package == "runtime.v1"


@pytest.mark.parametrize("message", sorted(PUBLISHED))
def test_fields_have_the_published_numbers(api: Any, message: str) -> None:
    fields = getattr(api, message).DESCRIPTOR.fields_by_name
    assert {name: field.number for name, field in fields.items()} == PUBLISHED[message]


@pytest.mark.parametrize("enum", sorted(ENUMS))
def test_enums_have_the_published_values(api: Any, enum: str) -> None:
    values = api.DESCRIPTOR.enum_types_by_name[enum].values_by_name
    assert {name: value.number for name, value in values.items()} == ENUMS[enum]


def test_services_name_published_methods(api: Any) -> None:
    services = {
        s.name: {m.name for m in s.methods} for s in api.DESCRIPTOR.services_by_name.values()
    }
    assert services["RuntimeService"] == {
        "Version",
        "RunPodSandbox",
        "StopPodSandbox",
        "RemovePodSandbox",
        "PodSandboxStatus",
        "ListPodSandbox",
        "CreateContainer",
        "StartContainer",
        "StopContainer",
        "RemoveContainer",
        "ListContainers",
        "ContainerStatus",
        "ExecSync",
        "Status",
    }
    assert services["ImageService"] == {"ListImages"}


def test_protoc_writes_both_modules_where_asked(tmp_path: Path) -> None:
    cri.generate(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cri_runtime_v1_pb2.py",
        "cri_runtime_v1_pb2_grpc.py",
    ]
