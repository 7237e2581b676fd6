"""The manifests in deploy/ are valid Kubernetes objects and agree with each other and the code."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cni import install as cni_install
from runtime_handler import containerd_config
from smarter_common import containerd

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The oldest Kubernetes a k3s fleet is likely to run, and the newest schema we have.
KUBERNETES_VERSIONS = ["1.28.0", "1.37.0"]


# A component's files are patches, not whole objects (tests/deploy/test_least_privilege.py
# validates the DaemonSets they make); examples/tools holds files for container tools outside
# Kubernetes (a Compose file), checked by tests/tools.
_NOT_MANIFESTS = (("components",), ("examples", "tools"))


def _manifest_files() -> list[Path]:
    return sorted(
        path
        for path in DEPLOY.rglob("*.yaml")
        if path.name != "kustomization.yaml"
        and not any(
            path.relative_to(DEPLOY).parts[: len(prefix)] == prefix for prefix in _NOT_MANIFESTS
        )
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
    unlisted = (
        listed
        - set(kustomization["resources"])
        - {str(p.relative_to(DEPLOY)) for p in (DEPLOY / "examples").glob("*.yaml")}
    )
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


def _containerd_runtimes(toml_text: str, version: int = 2) -> dict[str, Any]:
    document = tomllib.loads(re.sub(r"\{\{.*?\}\}", "", toml_text, flags=re.DOTALL))
    plugin = containerd.cri_runtime_plugin(version)
    runtimes: dict[str, Any] = containerd.lookup(document, (*plugin, "containerd", "runtimes"))
    return runtimes


def _pod_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = _one("DaemonSet", name)["spec"]["template"]["spec"]
    return spec


def _host_path_of(spec: dict[str, Any], container: dict[str, Any], path: str) -> PurePosixPath:
    """The host path that `path`, as `container` sees it, is a mount of."""
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    for mount in sorted(container["volumeMounts"], key=lambda m: -len(m["mountPath"])):
        inside = PurePosixPath(mount["mountPath"])
        if PurePosixPath(path).is_relative_to(inside) and mount["name"] in host_paths:
            return PurePosixPath(host_paths[mount["name"]]) / PurePosixPath(path).relative_to(
                inside
            )
    raise AssertionError(f"{path} is on no host path in {container['name']}")


def test_runtimeclass_handler_is_the_runtime_the_installer_adds() -> None:
    handler = _one("RuntimeClass", "hybrid")["handler"]
    assert handler == containerd_config.HANDLER
    runtime = DEPLOY / "runtime"
    shipped = {
        "containerd-hybrid.toml": _containerd_runtimes(
            (runtime / "containerd-hybrid.toml").read_text()
        ),
        "k3s v2": _containerd_runtimes((runtime / "k3s-config.toml.tmpl").read_text()),
        "k3s v3": _containerd_runtimes((runtime / "k3s-config-v3.toml.tmpl").read_text(), 3),
    }
    for name, runtimes in shipped.items():
        assert set(runtimes) == {handler}, name
        assert runtimes[handler]["runtime_type"] == "io.containerd.runc.v2", name
        assert runtimes[handler]["options"]["BinaryName"] == containerd_config.BINARY, name


def test_the_reference_tables_are_what_the_installer_appends() -> None:
    text = (DEPLOY / "runtime/containerd-hybrid.toml").read_text()
    assert text.endswith("\n" + containerd_config.runtime_tables(2))


def _installer_options(container: dict[str, Any]) -> dict[str, str]:
    """An installer's `--name=value` options (a bare flag maps to "")."""
    flags = [arg.removeprefix("--") for arg in container["args"] if arg.startswith("--")]
    return {name: value for name, _, value in (flag.partition("=") for flag in flags)}


def test_both_installers_install_the_bundle_the_image_carries_where_its_programs_name_it() -> None:
    for name in ("smarter-cni", "smarter-hybrid-runtime"):
        spec = _pod_spec(name)
        (install,) = spec["initContainers"]
        options = _installer_options(install)
        # The image's bundle (deploy/Dockerfile: build_bundle.py --out /opt/smarter-edge/bundle),
        # built for the default prefix, which must be the host's at the installer's host root.
        assert options["bundle"] == "/opt/smarter-edge/bundle", name
        prefix = PurePosixPath(options["host-root"]) / "opt/smarter-edge"
        assert _host_path_of(spec, install, str(prefix)) == PurePosixPath("/opt/smarter-edge"), name
        if name == "smarter-cni":
            assert options["plugin"] == f"{options['bundle']}/{cni_install.PLUGIN_NAME}"


def test_runtime_binary_is_installed_where_containerd_looks_for_it() -> None:
    spec = _pod_spec("smarter-hybrid-runtime")
    (install,) = spec["initContainers"]
    binary = _installer_options(install).get("binary", containerd_config.BINARY)
    assert binary == containerd_config.BINARY  # what the installer names in containerd's config
    under_root = PurePosixPath(_installer_options(install)["host-root"]) / binary.lstrip("/")
    assert _host_path_of(spec, install, str(under_root)) == PurePosixPath(binary)


def test_runtime_installer_configures_the_hosts_containerd_and_may_restart_it() -> None:
    spec = _pod_spec("smarter-hybrid-runtime")
    (install,) = spec["initContainers"]
    assert install["command"] == ["smarter-hybrid-runtime"]
    assert install["args"][0] == "install-containerd-config"
    options = _installer_options(install)
    _assert_host_dirs_keep_their_paths_under(options["host-root"], spec, install)
    # The restart enters PID 1's namespaces: only a pod in the host PID namespace can, and only
    # with the capabilities setns(2) asks for (tests/deploy/test_least_privilege.py).
    assert "restart" in options
    assert spec["hostPID"] is True
    assert {"SYS_ADMIN", "SYS_CHROOT", "SYS_PTRACE"} <= set(
        install["securityContext"]["capabilities"]["add"]
    )


def _assert_host_dirs_keep_their_paths_under(
    host_root: str, spec: dict[str, Any], container: dict[str, Any]
) -> None:
    """Every host path mounted under `host_root` sits at its own path there, as the installers
    expect of a host root; and the host's / itself is not mounted."""
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    under = [
        m
        for m in container["volumeMounts"]
        if PurePosixPath(m["mountPath"]).is_relative_to(host_root) and m["name"] in host_paths
    ]
    assert under, f"{container['name']} mounts nothing under {host_root}"
    for mount in under:
        inside = PurePosixPath("/") / PurePosixPath(mount["mountPath"]).relative_to(host_root)
        assert inside != PurePosixPath("/"), f"{container['name']} mounts a whole host root"
        assert _host_path_of(spec, container, mount["mountPath"]) == inside, mount


def test_cni_installer_installs_the_conflist_the_agent_and_dnsmasq_read() -> None:
    spec = _pod_spec("smarter-cni")
    (install,) = spec["initContainers"]
    assert install["command"] == ["smarter-cni"] and install["args"][0] == "install"
    options = dict(arg.removeprefix("--").split("=", 1) for arg in install["args"][1:])
    _assert_host_dirs_keep_their_paths_under(options["host-root"], spec, install)
    assert PurePosixPath(options["plugin"]).name == cni_install.PLUGIN_NAME
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    (generator,) = [
        g for g in kustomization["configMapGenerator"] if g["name"] == "smarter-cni-conflist"
    ]
    (entry,) = generator["files"]
    key, source = entry.split("=", 1)
    conflist = json.loads((DEPLOY / source).read_text())
    assert conflist["plugins"][0]["type"] == cni_install.PLUGIN_NAME
    conflist_volume = {
        v["name"]
        for v in spec["volumes"]
        if v.get("configMap", {}).get("name") == generator["name"]
    }
    for container in [install, *spec["containers"]]:
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        conf = (
            options["conflist"] if container is install else container["args"][1].split("=", 1)[1]
        )
        assert PurePosixPath(conf).name == key, container["name"]
        assert mounts[str(PurePosixPath(conf).parent)] in conflist_volume, container["name"]


def test_cni_state_and_hosts_dirs_are_the_hosts_own_paths_in_both_containers() -> None:
    spec = _pod_spec("smarter-cni")
    (plugin, *_) = json.loads((DEPLOY / "cni/10-smarter.conflist").read_text())["plugins"]
    for container in spec["containers"]:
        for path in (plugin["stateDir"], plugin["dns"]["hostsDir"]):
            # The exec'd plugin runs on the host and sees the host's paths: so must the agent.
            assert _host_path_of(spec, container, path) == PurePosixPath(path), container["name"]


def test_dnsmasq_forwards_to_the_nodes_resolvers_not_to_itself() -> None:
    assert _pod_spec("smarter-cni")["dnsPolicy"] == "Default"


def test_device_manager_reads_the_rules_configmap_and_serves_the_kubelets_plugin_dir() -> None:
    spec = _pod_spec("smarter-device-manager")
    (container,) = spec["containers"]
    options = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
    rules = PurePosixPath(options["rules"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(rules.parent)]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    configmap = _one("ConfigMap", volume["configMap"]["name"])
    assert rules.name in configmap["data"]
    assert _host_path_of(spec, container, options["plugin-dir"]) == PurePosixPath(
        "/var/lib/kubelet/device-plugins"
    )


def test_example_pods_ask_for_resources_the_device_manager_advertises() -> None:
    from device_plugin import rules as device_rules

    configmap = _one("ConfigMap", "smarter-device-manager-rules")
    parsed = device_rules.parse_rules(configmap["data"]["conf.yaml"])
    for pod in _objects("Pod"):
        for container in pod["spec"]["containers"]:
            for resource in container.get("resources", {}).get("limits", {}):
                if not resource.startswith("smarter-devices/"):
                    continue
                name = resource.removeprefix("smarter-devices/")
                advertised = re.fullmatch(r"rproc[0-9]+", name) or any(
                    rule.pattern.search(name) for rule in parsed
                )
                assert advertised, f"{pod['metadata']['name']} asks for {resource}"


def test_example_pods_run_unchanged_on_the_simulated_gateway() -> None:
    from runtime_handler.core_select import BoardView, check_board
    from sim import boards
    from sim.node_images import BUSYBOX_IMAGE
    from testbed.images import firmware_image

    simulated = boards.board(None)
    # smarter-sim build-node-images's, and the demo's firmware
    built = {BUSYBOX_IMAGE, firmware_image("hello"), firmware_image("echo")}
    for pod in _objects("Pod"):
        board = pod["metadata"].get("annotations", {}).get("smarter-edge.io/board")
        check_board(board, BoardView(simulated.model, simulated.compatible))
        for container in pod["spec"]["containers"]:
            assert container["image"] in built, f"{pod['metadata']['name']}: {container['image']}"


def test_each_example_says_which_line_to_change_for_a_real_board() -> None:
    for path in sorted((DEPLOY / "examples").glob("*.yaml")):
        lines = path.read_text().splitlines()
        marked = [i for i, line in enumerate(lines) if "REAL BOARD:" in line]
        assert marked, f"{path.name} does not say what to change for a real board"
        for index in marked:
            # The marked comment sits right above the line it is about (or its comment block).
            following = next(
                line for line in lines[index + 1 :] if not line.lstrip().startswith("#")
            )
            assert ":" in following, f"{path.name}:{index + 1} marks no setting"


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

    for config_path in (
        "runtime/containerd-hybrid.toml",
        "runtime/k3s-config.toml.tmpl",
        "runtime/k3s-config-v3.toml.tmpl",
    ):
        text = (DEPLOY / config_path).read_text()
        assert f'pod_annotations = ["{BOARD_ANNOTATIONS[0]}"]' in text, config_path
    pod = _one("Pod", "blinky")
    assert BOARD_ANNOTATIONS[0] in pod["metadata"]["annotations"]
