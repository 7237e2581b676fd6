"""The manifests in deploy/ are valid Kubernetes objects and agree with each other and the code."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The oldest Kubernetes a k3s fleet is likely to run, and the newest schema we have.
KUBERNETES_VERSIONS = ["1.28.0", "1.37.0"]


def _manifest_files() -> list[Path]:
    return sorted(
        path
        for path in DEPLOY.rglob("*.yaml")
        if path.name != "kustomization.yaml"
    )


def _documents(path: Path) -> Iterator[dict[str, Any]]:
    for document in yaml.safe_load_all(path.read_text()):
        if document:
            yield document


def _objects(kind: str) -> list[dict[str, Any]]:
    return [doc for path in _manifest_files() for doc in _documents(path) if doc["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [doc for doc in _objects(kind) if doc["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid_against_the_kubernetes_schema(path: Path, version: str) -> None:
    documents = list(_documents(path))
    assert documents, f"{path} holds no object"
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_kustomization_names_only_files_that_exist() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (DEPLOY / resource).is_file(), resource
    for generator in kustomization["configMapGenerator"]:
        for entry in generator["files"]:
            assert (DEPLOY / entry.split("=", 1)[-1]).is_file(), entry
    listed = {str(p.relative_to(DEPLOY)) for p in _manifest_files()}
    unlisted = listed - set(kustomization["resources"]) - {
        str(p.relative_to(DEPLOY)) for p in (DEPLOY / "examples").glob("*.yaml")
    }
    assert not unlisted, f"manifests not in kustomization.yaml: {sorted(unlisted)}"


def test_every_config_map_a_daemonset_mounts_is_deployed() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    available = {doc["metadata"]["name"] for doc in _objects("ConfigMap")} | {
        generator["name"] for generator in kustomization["configMapGenerator"]
    }
    for daemonset in _objects("DaemonSet"):
        for volume in daemonset["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in available, daemonset["metadata"]["name"]


def _containerd_runtimes(toml_text: str) -> dict[str, Any]:
    runtimes: dict[str, Any] = tomllib.loads(toml_text)["plugins"]["io.containerd.grpc.v1.cri"][
        "containerd"
    ]["runtimes"]
    return runtimes


def _k3s_template_body() -> str:
    """The TOML that k3s appends to its base template: the file without template actions."""
    text = (DEPLOY / "runtime/k3s-config.toml.tmpl").read_text()
    return re.sub(r"\{\{.*?\}\}", "", text, flags=re.DOTALL)


def test_runtimeclass_handler_is_the_containerd_runtime_name() -> None:
    handler = _one("RuntimeClass", "hybrid")["handler"]
    dropin = _containerd_runtimes((DEPLOY / "runtime/containerd-hybrid.toml").read_text())
    k3s = _containerd_runtimes(_k3s_template_body())
    assert set(dropin) == {handler}
    assert set(k3s) == {handler}
    assert dropin[handler]["runtime_type"] == "io.containerd.runc.v2"
    assert dropin == k3s


def test_runtime_binary_is_installed_where_containerd_looks_for_it() -> None:
    dropin = _containerd_runtimes((DEPLOY / "runtime/containerd-hybrid.toml").read_text())
    binary = Path(dropin["hybrid"]["options"]["BinaryName"])
    daemonset = _one("DaemonSet", "smarter-hybrid-runtime")
    spec = daemonset["spec"]["template"]["spec"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    (install,) = spec["initContainers"]
    mounts = {m["mountPath"]: host_paths.get(m["name"]) for m in install["volumeMounts"]}
    script = install["args"][0]
    installed = [
        Path(host) / binary.name
        for mount, host in mounts.items()
        if host and f"mv -f {mount}/.{binary.name}.new {mount}/{binary.name}" in script
    ]
    assert installed == [binary]


def test_runtimeclass_schedules_only_where_the_runtime_is_installed() -> None:
    runtime_class = _one("RuntimeClass", "hybrid")
    daemonset = _one("DaemonSet", "smarter-hybrid-runtime")
    assert (
        runtime_class["scheduling"]["nodeSelector"]
        == daemonset["spec"]["template"]["spec"]["nodeSelector"]
    )


def test_example_firmware_pod_uses_the_runtimeclass_and_a_core() -> None:
    pod = _one("Pod", "blinky")
    assert pod["spec"]["runtimeClassName"] == _one("RuntimeClass", "hybrid")["metadata"]["name"]
    (container,) = pod["spec"]["containers"]
    assert "smarter-devices/rproc0" in container["resources"]["limits"]


def test_every_suite_container_runs_the_image_the_kustomization_pins() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    pinned = {f"{entry['name']}:{entry['newTag']}" for entry in kustomization["images"]}
    used = set()
    for daemonset in _objects("DaemonSet"):
        spec = daemonset["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            used.add(container["image"])
    assert used == pinned


def test_dockerfile_tag_is_the_pinned_image() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    (entry,) = kustomization["images"]
    assert f"-t {entry['name']}:{entry['newTag']} " in (DEPLOY / "Dockerfile").read_text()


def test_board_annotation_reaches_the_runtime() -> None:
    from runtime_handler.bundle import BOARD_ANNOTATIONS

    for config_path in ("runtime/containerd-hybrid.toml", "runtime/k3s-config.toml.tmpl"):
        text = (DEPLOY / config_path).read_text()
        assert f'pod_annotations = ["{BOARD_ANNOTATIONS[0]}"]' in text, config_path
    pod = _one("Pod", "blinky")
    assert BOARD_ANNOTATIONS[0] in pod["metadata"]["annotations"]
