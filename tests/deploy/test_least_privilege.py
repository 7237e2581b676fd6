"""Each DaemonSet container gets only the host access it uses, on every node layout.

The manifests are rendered as kustomize renders them (deploy/ alone for Debian's containerd, or
with a component of deploy/components/: strategic-merge patches on named lists), and checked
against what the programs really write (taken from the installers' own placement code). The
capabilities left are shown to be enough, and each of them needed, by running the real
programs with exactly that set (setpriv, no_new_privs, /proc/sys read-only as in a container)
in network namespaces the tests create.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cni import install as cni_install
from runtime_handler import containerd_config
from smarter_common import containerd
from smarter_common.hostroot import HostRoot
from testbed.netns import in_netns, ip
from testbed.processes import terminate
from tests.cni import harness

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPONENTS = DEPLOY / "components"
# Layout name -> the component that adapts deploy/ to it (None: deploy/ as it is).
LAYOUTS: dict[str, str | None] = {
    "debian-containerd": None,
    "upstream-containerd": "upstream-containerd",
    "k3s": "k3s",
}
KUBERNETES_VERSIONS = ["1.28.0", "1.37.0"]
# What each container keeps, per (DaemonSet, container); the tests below run the programs with
# exactly these and show that each one is needed.
CAPABILITIES: dict[tuple[str, str], set[str]] = {
    ("smarter-cni", "install"): set(),
    ("smarter-cni", "agent"): {"NET_ADMIN", "SYS_ADMIN"},
    ("smarter-cni", "dns"): {"NET_BIND_SERVICE", "SETUID", "SETGID"},
    ("smarter-device-manager", "device-manager"): set(),
    ("smarter-hybrid-runtime", "install"): {"SYS_ADMIN", "SYS_CHROOT", "SYS_PTRACE"},
    ("smarter-hybrid-runtime", "idle"): set(),
}
# Merge keys of the lists our patches touch, as Kubernetes' strategic merge patch defines them.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
}
DEBIAN_CONFIG = """\
version = 2
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "/etc/cni/net.d"
"""
K3S_RENDERED = f"""\
version = 2
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{containerd.K3S_CNI_BIN_DIR}"
  conf_dir = "{containerd.K3S_CNI_CONF_DIR}"
"""


# ---- rendering ------------------------------------------------------------------------------


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _merge(target: Any, patch: Any, key: str | None = None) -> Any:
    """`patch` applied to `target` as a strategic merge patch (the subset our patches use)."""
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = dict(target)
        for name, value in patch.items():
            merged[name] = _merge(merged[name], value, name) if name in merged else value
        return merged
    merge_key = _MERGE_KEYS.get(key or "")
    if isinstance(target, list) and isinstance(patch, list) and merge_key:
        items = [copy.deepcopy(item) for item in target]
        for change in patch:
            index = next(
                (i for i, item in enumerate(items) if item[merge_key] == change[merge_key]), None
            )
            if change.get("$patch") == "delete":
                assert index is not None, f"patch deletes a missing {key} entry: {change}"
                del items[index]
            elif index is None:
                items.append(change)
            else:
                items[index] = _merge(items[index], change)
        return items
    return patch


def render(layout: str) -> dict[str, dict[str, Any]]:
    """The DaemonSets of deploy/ for `layout`, by name."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    daemonsets = {
        doc["metadata"]["name"]: doc
        for resource in kustomization["resources"]
        for doc in _documents(DEPLOY / resource)
        if doc["kind"] == "DaemonSet"
    }
    component = LAYOUTS[layout]
    if component:
        spec = yaml.safe_load((COMPONENTS / component / "kustomization.yaml").read_text())
        assert spec["kind"] == "Component"
        for entry in spec["patches"]:
            for patch in _documents(COMPONENTS / component / entry["path"]):
                name = patch["metadata"]["name"]
                daemonsets[name] = _merge(daemonsets[name], patch)
    return daemonsets


def _containers(daemonset: dict[str, Any]) -> list[dict[str, Any]]:
    spec = daemonset["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _host_mounts(daemonset: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """mountPath -> (host path, writable) of each hostPath the container mounts."""
    spec = daemonset["spec"]["template"]["spec"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    return {
        m["mountPath"]: (PurePosixPath(host_paths[m["name"]]), not m.get("readOnly", False))
        for m in container.get("volumeMounts", [])
        if m["name"] in host_paths
    }


def _every_container(layout: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for daemonset in render(layout).values():
        for container in _containers(daemonset):
            yield daemonset, container


# ---- what each container writes on the host ------------------------------------------------


def _node(tmp: Path, layout: str) -> HostRoot:
    """A host root laid out like a node of `layout`, with its containerd's own config."""
    root = tmp / layout
    if layout == "k3s":
        config = root / containerd.K3S_CONTAINERD_DIR.relative_to("/") / "config.toml"
        config.parent.mkdir(parents=True)
        config.write_text(K3S_RENDERED)
    else:
        (root / "etc/containerd").mkdir(parents=True)
        if layout == "debian-containerd":
            (root / "etc/containerd/config.toml").write_text(DEBIAN_CONFIG)
    return HostRoot(root)


# Where the installer puts the bundle the host-side programs run on (scripts/build_bundle.py).
BUNDLE_PREFIX = PurePosixPath("/opt/smarter-edge")


def _writes(layout: str, tmp: Path) -> dict[tuple[str, str], set[PurePosixPath]]:
    """The host directories each container writes on a node of `layout`."""
    node = containerd.discover(_node(tmp, layout))
    placed = cni_install.placement(node, "10-smarter.conflist")
    (plugin, *_) = json.loads((DEPLOY / "cni/10-smarter.conflist").read_text())["plugins"]
    state = {PurePosixPath(plugin["stateDir"])}
    assert PurePosixPath(plugin["dns"]["hostsDir"]).is_relative_to(plugin["stateDir"])
    return {
        ("smarter-cni", "install"): {
            BUNDLE_PREFIX,
            placed.plugin.parent,
            placed.conflist.parent,
        },
        ("smarter-cni", "agent"): state,  # leases, DNS records, the agent's socket
        ("smarter-cni", "dns"): state,  # the records directory, made before dnsmasq starts
        ("smarter-device-manager", "device-manager"): {
            PurePosixPath("/var/lib/kubelet/device-plugins")
        },
        ("smarter-hybrid-runtime", "install"): {
            BUNDLE_PREFIX,
            PurePosixPath(containerd_config.BINARY).parent,
            node.config.parent,
        },
        ("smarter-hybrid-runtime", "idle"): set(),
    }


# ---- the manifests --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_container_mounts_the_hosts_root(layout: str) -> None:
    for daemonset, container in _every_container(layout):
        for mount_path, (host_path, _) in _host_mounts(daemonset, container).items():
            assert os.path.normpath(host_path) != "/", (
                f"{daemonset['metadata']['name']}/{container['name']} mounts the host's / at"
                f" {mount_path}"
            )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_container_can_write_exactly_the_host_directories_it_writes(
    layout: str, tmp_path: Path
) -> None:
    writes = _writes(layout, tmp_path)
    for daemonset, container in _every_container(layout):
        key = (daemonset["metadata"]["name"], container["name"])
        writable = {host for host, rw in _host_mounts(daemonset, container).values() if rw}
        assert writable == writes[key], f"{key} on {layout}: writable {sorted(map(str, writable))}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_installers_find_each_host_directory_at_its_own_path_under_their_host_root(
    layout: str,
) -> None:
    for daemonset, container in _every_container(layout):
        roots = [a.split("=", 1)[1] for a in container.get("args", []) if "--host-root=" in a]
        roots += re.findall(r"--host-root=(\S+)", " ".join(container.get("args", [])))
        for root in set(roots):
            for mount_path, (host_path, _) in _host_mounts(daemonset, container).items():
                if PurePosixPath(mount_path).is_relative_to(root):
                    assert HostRoot(Path(root)).path(host_path) == Path(mount_path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_container_drops_what_it_does_not_use(layout: str) -> None:
    for daemonset, container in _every_container(layout):
        key = (daemonset["metadata"]["name"], container["name"])
        context = container.get("securityContext", {})
        assert not context.get("privileged", False), key
        assert context.get("allowPrivilegeEscalation") is False, key
        assert context.get("readOnlyRootFilesystem") is True, key
        assert context["capabilities"]["drop"] == ["ALL"], key
        assert set(context["capabilities"].get("add", [])) == CAPABILITIES[key], key
        pod_context = daemonset["spec"]["template"]["spec"].get("securityContext", {})
        seccomp = context.get("seccompProfile") or pod_context.get("seccompProfile")
        assert seccomp == {"type": "RuntimeDefault"}, key


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layouts_daemonsets_are_valid_against_the_kubernetes_schema(
    layout: str, version: str
) -> None:
    for daemonset in render(layout).values():
        kubernetes_validate.validate(daemonset, version, strict=True)


_PRIVILEGE = re.compile(
    r"^\s*(privileged:\s*true|host(PID|IPC|Network):\s*true|allowPrivilegeEscalation:\s*true"
    r"|.*:\s*unconfined|.*[Uu]nconfined)\b"
)


def _uncommented_privileges(text: str) -> list[str]:
    """Lines granting a privilege (privileged, host namespaces, an added capability, an
    unconfined profile) with no comment on them or directly above them; a comment above a
    run of capabilities covers the run."""
    lines = text.splitlines()
    found = []
    in_add = None  # indentation of the `add:` key whose items we are in
    for number, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if in_add is not None and line.strip() and indent <= in_add:
            in_add = None
        is_capability = in_add is not None and re.match(r"^\s*- [A-Z_]+\s*(#.*)?$", line)
        if re.match(r"^\s*add:\s*$", line):
            in_add = indent
        if not (is_capability or _PRIVILEGE.match(line)) or "#" in line:
            continue
        above = number - 1
        while is_capability and above >= 0 and re.match(r"^\s*- [A-Z_]+\s*$", lines[above]):
            above -= 1
        if above < 0 or not lines[above].strip().startswith("#"):
            found.append(f"line {number + 1}: {line.strip()}")
    return found


def test_every_privilege_left_says_why() -> None:
    files = [*DEPLOY.glob("*/daemonset.yaml"), *COMPONENTS.rglob("*.yaml")]
    assert files
    for path in files:
        unexplained = _uncommented_privileges(path.read_text())
        assert not unexplained, f"{path.relative_to(DEPLOY)}: {unexplained}"


def test_an_unexplained_privilege_is_found() -> None:
    manifest = """\
securityContext:
  privileged: true
  capabilities:
    add:
      # explained
      - NET_ADMIN
      - SYS_ADMIN
    drop: [ALL]
hostPID: true # explained
"""
    assert _uncommented_privileges(manifest) == ["line 2: privileged: true"]
    assert _uncommented_privileges(manifest.replace("      # explained\n", "")) == [
        "line 2: privileged: true",
        "line 5: - NET_ADMIN",
        "line 6: - SYS_ADMIN",
    ]


def _kustomize(tmp_path: Path, layout: str) -> dict[str, dict[str, Any]]:
    """The DaemonSets `kubectl kustomize` renders for `layout`, by name."""
    # kustomize refuses absolute paths and a base that contains the kustomization using it.
    (tmp_path / "deploy").symlink_to(DEPLOY)
    site = tmp_path / "site"
    site.mkdir()
    component = LAYOUTS[layout]
    (site / "kustomization.yaml").write_text(
        "resources: [../deploy]\n"
        + (f"components: [../deploy/components/{component}]\n" if component else "")
    )
    built = subprocess.run(
        ["kubectl", "kustomize", str(site)], capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stderr
    return {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all(built.stdout)
        if doc and doc["kind"] == "DaemonSet"
    }


def _host_access(daemonset: dict[str, Any]) -> dict[str, Any]:
    spec = daemonset["spec"]["template"]["spec"]
    return {
        "pod": {k: spec.get(k) for k in ("hostPID", "hostNetwork", "securityContext")},
        "containers": {
            c["name"]: (_host_mounts(daemonset, c), c.get("securityContext"))
            for c in _containers(daemonset)
        },
    }


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is absent")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_kustomize_renders_the_same_host_access_as_these_tests(layout: str, tmp_path: Path) -> None:
    ours, theirs = render(layout), _kustomize(tmp_path, layout)
    assert set(ours) == set(theirs)
    for name in ours:
        assert _host_access(ours[name]) == _host_access(theirs[name]), name


# ---- the real programs with exactly the capabilities left ---------------------------------


def _capabilities(daemonset: str, container: str) -> set[str]:
    (found,) = [
        c
        for d, c in _every_container("debian-containerd")
        if (d["metadata"]["name"], c["name"]) == (daemonset, container)
    ]
    return set(found["securityContext"]["capabilities"].get("add", []))


def _as_container(capabilities: set[str], *command: str) -> list[str]:
    """`command` as a container runs it: root with only `capabilities`, no_new_privs, and
    /proc/sys read-only (in a private mount namespace of its own)."""
    keep = "".join(f",+{c.lower()}" for c in sorted(capabilities))
    confined = ["setpriv", f"--bounding-set=-all{keep}", "--inh-caps=-all", "--no-new-privs"]
    script = (
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys /proc/sys"
        ' && exec "$@"'
    )
    private = ["unshare", "--mount", "--propagation", "private"]
    return [*private, "sh", "-c", script, "sh", *confined, *command]


@contextmanager
def _running(netns: str, command: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], Any]]:
    """`command` in `netns`, its output in a file; stopped by PID afterwards."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns, *command], stdout=log, stderr=log, cwd=harness.REPO
        )
        try:
            yield process, log
        finally:
            terminate(process)
            log.seek(0)
            print(log.read().decode(errors="replace")[-3000:])


def _wait_for(condition: Any, process: subprocess.Popen[bytes], seconds: float = 20) -> bool:
    """True once `condition()` holds; False if `process` ended or time ran out first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _bridge_with_gateway(netns: str) -> None:
    ip("link", "add", "smarter0", "type", "bridge", netns=netns)
    ip("addr", "add", f"{harness.GATEWAY}/16", "dev", "smarter0", netns=netns)
    ip("link", "set", "smarter0", "up", netns=netns)


def _dns_command(node: harness.Node) -> list[str]:
    return [harness.PYTHON, "-m", "cni", "dns", "--conf", str(node.conflist_path)]


def test_dnsmasq_serves_pod_names_with_only_the_dns_containers_capabilities() -> None:
    with harness.node() as node:
        _bridge_with_gateway(node.netns)
        node.hosts_dir.mkdir(mode=0o755)
        (node.hosts_dir / "c1").write_text("10.210.0.7 sensor-7xk2p sensor\n")
        caps = _capabilities("smarter-cni", "dns")
        with _running(node.netns, _as_container(caps, *_dns_command(node))) as (process, _):
            assert _wait_for(lambda: node.resolve("sensor") is not None, process)
            assert node.resolve("sensor") == ["10.210.0.7"]
            # The bridge recreated (agent restart, node reboot): dnsmasq binds port 53 again.
            ip("link", "del", "smarter0", netns=node.netns)
            _bridge_with_gateway(node.netns)
            assert _wait_for(lambda: node.resolve("sensor-7xk2p") == ["10.210.0.7"], process)


@pytest.mark.parametrize("missing", sorted(CAPABILITIES[("smarter-cni", "dns")]))
def test_dnsmasq_does_not_start_without_each_of_its_capabilities(missing: str) -> None:
    with harness.node() as node:
        _bridge_with_gateway(node.netns)
        caps = _capabilities("smarter-cni", "dns") - {missing}
        with _running(node.netns, _as_container(caps, *_dns_command(node))) as (process, log):
            assert process.wait(timeout=20) != 0
            log.seek(0)
            assert b"dnsmasq" in log.read()


@contextmanager
def _agent(node: harness.Node, capabilities: set[str]) -> Iterator[tuple[Any, Any]]:
    # A node forwards already (k3s and kubeadm see to it); a container cannot change it.
    in_netns(node.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    command = [harness.PYTHON, "-m", "cni", "--log-format", "json", "agent"]
    command += ["--conf", str(node.conflist_path)]
    with _running(node.netns, _as_container(capabilities, *command)) as running:
        yield running


def _events(log: Any) -> list[dict[str, Any]]:
    fd = log.fileno()
    text = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
    events = []
    for line in text.splitlines():
        with suppress(ValueError):
            events.append(json.loads(line))
    return [e for e in events if isinstance(e, dict)]


def test_agent_adds_and_deletes_a_pod_with_only_the_agent_containers_capabilities() -> None:
    with harness.node() as node, harness.pods(1) as (pod,):
        socket = node.state / "agent.sock"
        with _agent(node, _capabilities("smarter-cni", "agent")) as (process, log):
            assert _wait_for(socket.exists, process)
            added = node.add_pod(pod, "c1", "sensor-7xk2p")
            assert added.returncode == 0, added.stdout + added.stderr
            assert added.json["ips"][0]["address"].startswith("10.210.")
            assert "eth0" in ip("-o", "link", "show", netns=pod).stdout
            assert node.del_pod("c1", pod).returncode == 0
            served = [
                (e["command"], e["container_id"]) for e in _events(log) if e["event"] == "served"
            ]
            assert served == [("ADD", "c1"), ("DEL", "c1")]  # the agent's work, not the plugin's


def test_agent_without_sys_admin_cannot_enter_a_pods_network_namespace() -> None:
    with harness.node() as node, harness.pods(1) as (pod,):
        caps = _capabilities("smarter-cni", "agent") - {"SYS_ADMIN"}
        with _agent(node, caps) as (process, log):
            assert _wait_for((node.state / "agent.sock").exists, process)
            added = node.add_pod(pod, "c1", "sensor-7xk2p")
            assert added.returncode != 0
            assert "Operation not permitted" in added.stdout, added.stdout
            assert [e for e in _events(log) if e.get("event") == "refused"]


def test_agent_without_net_admin_cannot_make_the_bridge() -> None:
    with harness.node() as node:
        caps = _capabilities("smarter-cni", "agent") - {"NET_ADMIN"}
        with _agent(node, caps) as (process, _):
            assert process.wait(timeout=30) != 0
        assert "smarter0" not in node.links()


@contextmanager
def _stand_in_for_pid_1() -> Iterator[int]:
    """A process in namespaces of its own, holding every capability this test has: what the
    host's PID 1 is to the runtime installer."""
    process = subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--pid",
            "--fork",
            "--mount-proc",
            "sleep",
            "300",
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
            if children.split():
                target = int(children.split()[0])
                # unshare has made the namespaces once its child runs in another one.
                if os.readlink(f"/proc/{target}/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
                    break
            assert time.monotonic() < deadline, "the stand-in did not start"
            time.sleep(0.02)
        yield target
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        with suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


def _restart_as_installer(target: int, capabilities: set[str]) -> subprocess.CompletedProcess[str]:
    """The installer's restart command, aimed at `target` and running `true` there."""
    command = containerd_config.restart_command("containerd.service")
    enter = command[: command.index("--")]
    assert "--target=1" in enter
    enter = [f"--target={target}" if word == "--target=1" else word for word in enter]
    keep = "".join(f",+{c.lower()}" for c in sorted(capabilities))
    confined = ["setpriv", f"--bounding-set=-all{keep}", "--inh-caps=-all", "--no-new-privs"]
    return subprocess.run(
        [*confined, *enter, "--", "/bin/true"], capture_output=True, text=True, timeout=30
    )


def test_runtime_installer_enters_pid_1s_namespaces_with_only_its_capabilities() -> None:
    caps = _capabilities("smarter-hybrid-runtime", "install")
    with _stand_in_for_pid_1() as target:
        entered = _restart_as_installer(target, caps)
        assert entered.returncode == 0, entered.stderr


@pytest.mark.parametrize("missing", sorted(CAPABILITIES[("smarter-hybrid-runtime", "install")]))
def test_runtime_installer_cannot_enter_pid_1s_namespaces_without_each_capability(
    missing: str,
) -> None:
    caps = _capabilities("smarter-hybrid-runtime", "install") - {missing}
    with _stand_in_for_pid_1() as target:
        entered = _restart_as_installer(target, caps)
        assert entered.returncode != 0
        assert "nsenter" in entered.stderr


def test_device_manager_sees_the_same_devices_with_no_capability(tmp_path: Path) -> None:
    rules = yaml.safe_load((DEPLOY / "device-manager/rules-configmap.yaml").read_text())
    conf = tmp_path / "conf.yaml"
    conf.write_text(rules["data"]["conf.yaml"])
    command = [sys.executable, "-m", "device_plugin", "--list", "--rules", str(conf)]
    root = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=harness.REPO)
    confined = subprocess.run(
        _as_container(set(), *command), capture_output=True, text=True, timeout=60, cwd=harness.REPO
    )
    assert root.returncode == 0, root.stderr
    assert (confined.returncode, confined.stdout) == (0, root.stdout), confined.stderr
