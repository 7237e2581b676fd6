"""Every containerd config a node really has still serves the kubelet after the runtime installer.

For each fixture (tests/fixtures/containerd/, each with its origin in its first line) the
installer runs as the DaemonSet runs it (the built zipapp, `--host-root`); a node operator's
paths are set on its output (testbed.node_config.operator_paths); then a real containerd (Debian's
1.6, in a network namespace of the test's own, everything under the test's directory) must load
its CRI plugin with the node's runtimes unchanged plus `hybrid`, and run a pod of each over CRI
as the kubelet does. Schema 3 configs are containerd 2.x's: no containerd 2 exists on this
machine, so those are checked with the installer's own CRI rules only.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from runtime_handler import containerd_config
from runtime_handler.containerd_config import ContainerdConfigError
from sim.mounts import detach_all
from smarter_common import containerd
from smarter_common.hostroot import HostRoot
from testbed.containerd import Containerd, ContainerdLayout, overlay_works
from testbed.cri.client import ContainerSpec, CriClient, PodSpec
from testbed.images import BUSYBOX_IMAGE, PAUSE_IMAGE, Images, build_images
from testbed.node_config import operator_paths
from testbed.processes import Processes

pytestmark = [pytest.mark.containerd]

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "containerd"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
REFERENCE_PLUGINS = Path("/usr/lib/cni")
K3S_DIR = containerd.K3S_CONTAINERD_DIR


@dataclass(frozen=True)
class Bed:
    """What every fixture's containerd shares: zipapps, images, the network namespace."""

    work: Path
    runtime: Path  # the built smarter-hybrid-runtime zipapp
    images: Images
    netns: str
    snapshotter: str


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    if os.geteuid() != 0:
        pytest.fail("these tests start containerd in a network namespace: they need root")
    work = tmp_path_factory.mktemp("node-configs")
    work.chmod(0o755)
    built = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_zipapps.py"), "--out", str(work / "bin")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    images = build_images(work / "images", core="cortex-m4", firmware=())
    netns = f"se-cfg-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        snapshotter = "overlayfs" if overlay_works(work) else "native"
        yield Bed(work, work / "bin" / "smarter-hybrid-runtime", images, netns, snapshotter)
    finally:
        subprocess.run(["ip", "netns", "delete", netns], capture_output=True)


def _fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def _install(root: Path, runtime: Path) -> subprocess.CompletedProcess[str]:
    """`smarter-hybrid-runtime install-containerd-config` as the DaemonSet runs it."""
    return subprocess.run(
        [str(runtime), "install-containerd-config", "--host-root", str(root), "--binary",
         str(runtime)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": SYSTEM_PATH, "SMARTER_LOG_FORMAT": "json"},
    )  # fmt: skip


def _runtimes(document: dict[str, Any]) -> dict[str, Any]:
    version = containerd.config_version(document, source="config")
    path = (*containerd.cri_runtime_plugin(version), "containerd", "runtimes")
    found = containerd.lookup(document, path)
    return dict(found) if isinstance(found, dict) else {}


def _dump(config: Path) -> dict[str, Any]:
    dumped = subprocess.run(
        ["containerd", "--config", str(config), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return tomllib.loads(dumped.stdout)


class Node:
    """One containerd on a config, in the bed's network namespace, torn down whatever happens."""

    def __init__(self, bed: Bed, base: Path) -> None:
        self.bed = bed
        self.layout = ContainerdLayout(base)
        self.processes = Processes(base / "logs")
        self.containerd = Containerd(self.layout, self.processes)
        self.cri: CriClient | None = None
        self.pods: list[str] = []

    def configure(self, installed: str) -> None:
        """The installer's output with the operator's paths, and CNI for the bed's pods."""
        layout = self.layout
        layout.base.mkdir(parents=True, exist_ok=True)
        layout.config.write_text(
            operator_paths(
                installed,
                layout,
                sandbox_image=PAUSE_IMAGE,
                cni_bin_dir=layout.cni_bin_dir,
                cni_conf_dir=layout.cni_conf_dir,
                snapshotter=self.bed.snapshotter,
            )
        )
        layout.cni_bin_dir.mkdir()
        for plugin in sorted(REFERENCE_PLUGINS.iterdir()):
            (layout.cni_bin_dir / plugin.name).symlink_to(plugin)
        layout.cni_conf_dir.mkdir()
        conflist = {
            "cniVersion": "1.0.0",
            "name": "node-config-test",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cfgtest0",
                    "isGateway": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "10.219.0.0/24"}]],
                        "dataDir": str(layout.base / "ipam"),
                    },
                }
            ],
        }
        (layout.cni_conf_dir / "10-test.conflist").write_text(json.dumps(conflist))

    def start(self) -> CriClient:
        env = {"PATH": SYSTEM_PATH, "HOME": "/root"}
        runc = shutil.which("runc")
        if runc:
            env["SMARTER_RUNC"] = runc
        self.containerd.start(netns=self.bed.netns, env=env)
        for tarball in self.bed.images.tarballs:
            self.containerd.import_image(tarball, self.bed.snapshotter)
        self.cri = CriClient(self.layout.socket)
        self.cri.wait_ready(timeout=30)
        return self.cri

    def run_hello(self, handler: str) -> tuple[str, str]:
        """A pod under `handler` whose busybox container prints a line; (pod info, its log)."""
        assert self.cri is not None
        name = f"hello-{handler or 'default'}"
        logs = self.layout.pod_logs / name
        logs.mkdir(parents=True)
        pod = PodSpec(name=name, uid=secrets.token_hex(8), runtime_handler=handler,
                      log_directory=str(logs))  # fmt: skip
        pod_id = self.cri.run_pod(pod)
        self.pods.append(pod_id)
        container = ContainerSpec(
            name="hello",
            image=BUSYBOX_IMAGE,
            command=["/bin/sh", "-c", f"echo hello from {name}"],
            log_path="hello.log",
        )
        container_id = self.cri.create_container(pod_id, pod, container)
        self.cri.start_container(container_id)
        status = self.cri.wait_container_exited(container_id, timeout=60)
        assert status.exit_code == 0, status
        info = json.dumps(dict(self.cri.pod_status(pod_id, verbose=True).info))
        return info, (logs / "hello.log").read_text()

    def close(self) -> None:
        if self.cri is not None:
            for pod_id in self.pods:
                for step in (self.cri.stop_pod, self.cri.remove_pod):
                    try:
                        step(pod_id)
                    except Exception:  # teardown goes on; containerd's stop cleans up the rest
                        break
            self.cri.close()
        self.containerd.stop()
        self.processes.stop_all()
        detach_all(self.layout.base)


@pytest.fixture
def node(bed: Bed, tmp_path: Path) -> Iterator[Node]:
    started = Node(bed, tmp_path / "containerd")
    try:
        yield started
    finally:
        started.close()


def _host_root(tmp_path: Path, host_path: PurePosixPath, text: str | None) -> Path:
    root = tmp_path / "host"
    target = HostRoot(root).path(host_path)
    target.parent.mkdir(parents=True)
    if text is not None:
        target.write_text(text)
    return root


def _serves_runc_and_hybrid(node: Node, installed: str) -> None:
    node.configure(installed)
    node.start()
    _, runc_log = node.run_hello("")
    assert "hello from hello-default" in runc_log
    hybrid_info, hybrid_log = node.run_hello(containerd_config.HANDLER)
    assert "hello from hello-hybrid" in hybrid_log
    assert str(node.bed.runtime) in hybrid_info  # containerd ran the pod through the zipapp


PACKAGED = ["debian-12.toml", "containerd-1.6-default.toml", "containerd-1.7-default.toml",
            "no-cri-section.toml"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("fixture", [*PACKAGED, "<empty file>", "<no file>"])
def test_a_packaged_config_still_serves_runc_pods_and_serves_hybrid_ones(
    bed: Bed, node: Node, tmp_path: Path, fixture: str
) -> None:
    original = _fixture(fixture) if fixture in PACKAGED else {"<empty file>": ""}.get(fixture)
    root = _host_root(tmp_path, containerd.CONTAINERD_CONFIG, original)
    installed = _install(root, bed.runtime)
    assert installed.returncode == 0, installed.stderr
    config = HostRoot(root).path(containerd.CONTAINERD_CONFIG)
    result = config.read_text()
    if original:
        assert result.startswith(original)  # appended: the node's file, comments and all
        before, after = _dump(config.with_name("config.toml.smarter-edge.orig")), _dump(config)
        kept = _runtimes(after)
        assert kept.pop(containerd_config.HANDLER)["options"]["BinaryName"] == str(bed.runtime)
        assert kept == _runtimes(before)  # the node's runtimes, as containerd reads them
    _serves_runc_and_hybrid(node, result)


@pytest.mark.slow
def test_k3s_renders_a_config_that_serves_runc_nvidia_and_hybrid(
    bed: Bed, node: Node, tmp_path: Path
) -> None:
    base = _fixture("k3s-rendered-v2.toml")
    root = _host_root(tmp_path, K3S_DIR / "config.toml", base)
    installed = _install(root, bed.runtime)
    assert installed.returncode == 0, installed.stderr
    template = HostRoot(root).path(K3S_DIR / "config.toml.tmpl").read_text()
    rendered = containerd_config.render_k3s_template(template, base)
    runtimes = _runtimes(tomllib.loads(rendered))
    assert runtimes.pop(containerd_config.HANDLER)["options"]["BinaryName"] == str(bed.runtime)
    assert runtimes == _runtimes(tomllib.loads(base))  # runc and nvidia as k3s made them
    _serves_runc_and_hybrid(node, rendered)


@pytest.mark.parametrize(
    "fixture", ["containerd-2.0-default.toml", "containerd-2.1-default.toml", "k3s-rendered-v3"]
)
def test_a_containerd_2_config_keeps_its_runtimes_and_gains_hybrid(
    tmp_path: Path, fixture: str
) -> None:
    """Checked with the installer's CRI rules only: no containerd 2 exists on this machine."""
    if fixture == "k3s-rendered-v3":
        base = _fixture("k3s-rendered-v3.toml")
        root = HostRoot(_host_root(tmp_path, K3S_DIR / "config.toml", base))
        containerd_config.install(root)
        template = root.path(K3S_DIR / "config-v3.toml.tmpl").read_text()
        result = containerd_config.render_k3s_template(template, base)
    else:
        base = _fixture(fixture)
        result = containerd_config.with_runtime(base, source=fixture) or ""
        assert result.startswith(base)
    document, original = tomllib.loads(result), tomllib.loads(base)
    assert containerd.cri_problems(document, 3) == []
    runtimes = _runtimes(document)
    hybrid = runtimes.pop(containerd_config.HANDLER)
    assert hybrid["runtime_type"] == containerd.RUNC_SHIM
    assert hybrid["options"]["BinaryName"] == containerd_config.BINARY
    assert runtimes == _runtimes(original)  # containerd 2 keeps its built-in runc beside them
    cni_before = containerd.lookup(original, ("plugins", "io.containerd.cri.v1.runtime", "cni"))
    assert containerd.lookup(document, ("plugins", "io.containerd.cri.v1.runtime", "cni")) == (
        cni_before
    )


def _checksums(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


@pytest.mark.parametrize(
    ("original", "reason"),
    [
        (
            _fixture("docker-containerd-io.toml"),
            "the CRI plugin is disabled (disabled_plugins names 'cri'): no kubelet can use this"
            " containerd",
        ),
        (
            'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n'
            '  default_runtime_name = "crun"\n',
            "no corresponding runtime configured in `containerd.runtimes` for `containerd`"
            ' `default_runtime_name = "crun"`',
        ),
    ],
    ids=["docker-containerd-io", "default-runtime-undeclared"],
)
def test_a_config_whose_cri_cannot_work_is_refused_byte_for_byte_unchanged(
    bed: Bed, tmp_path: Path, original: str, reason: str
) -> None:
    root = _host_root(tmp_path, containerd.CONTAINERD_CONFIG, original)
    directory = HostRoot(root).path("/etc/containerd")
    before = _checksums(directory)
    installed = _install(root, bed.runtime)
    assert installed.returncode == 2  # a configuration refused (smarter_common.entry)
    (refusal,) = installed.stderr.strip().splitlines()
    assert refusal.startswith(
        "smarter-hybrid-runtime install-containerd-config: /etc/containerd/config.toml:"
        " containerd's CRI plugin does not load it as it is: "
    )
    assert reason in refusal
    assert _checksums(directory) == before  # no backup, no probe file, not a byte changed


def test_what_containerd_itself_cannot_read_is_refused_with_its_reason(tmp_path: Path) -> None:
    original = 'version = 2\noom_score = "high"\n'  # TOML, but not containerd's
    root = HostRoot(_host_root(tmp_path, containerd.CONTAINERD_CONFIG, original))
    before = _checksums(root.path("/etc/containerd"))
    with pytest.raises(ContainerdConfigError) as refused:
        containerd_config.install(root)
    assert str(refused.value).startswith(
        "/etc/containerd/config.toml: containerd 1.x cannot read it with the runtime added: "
    )
    assert "failed to unmarshal TOML: (2, 1): Can't convert high(string) to int" in str(
        refused.value
    )
    assert _checksums(root.path("/etc/containerd")) == before


def test_the_issues_config_is_caught_by_the_rules_containerd_applies() -> None:
    """Debian's config with only `hybrid` appended: containerd 1.x drops its built-in runc."""
    broken = _fixture("debian-12.toml") + "\n" + containerd_config.runtime_tables(2)
    assert containerd.cri_problems(tomllib.loads(broken), 2) == [
        "no corresponding runtime configured in `containerd.runtimes` for `containerd`"
        " `default_runtime_name = \"runc\"` (runtimes: ['hybrid'])"
    ]
    fixed = containerd_config.with_runtime(_fixture("debian-12.toml"), source="config.toml")
    assert fixed is not None
    assert containerd.cri_problems(tomllib.loads(fixed), 2) == []


@pytest.mark.parametrize(
    ("document", "version", "problem"),
    [
        ({"version": 3, "disabled_plugins": ["io.containerd.grpc.v1.cri"]}, 3, "disabled"),
        (
            {"plugins": {"cri": {"containerd": {"runtimes": {"kata": {
                "runtime_type": "kata-runtime"}}}}}},
            1,
            "runtime 'kata' has runtime_type 'kata-runtime', which names no shim",
        ),
        (
            {"version": 2, "plugins": {"io.containerd.grpc.v1.cri": {"containerd": {
                "runtimes": {"runc": {"runtime_type": containerd.RUNC_SHIM,
                                      "runtime_root": "/run/x"}}}}}},
            2,
            "runtime 'runc': `runtime_root` only works for io.containerd.runtime.v1.linux",
        ),
    ],
    ids=["cri-disabled", "unknown-runtime-type", "legacy-runtime-root"],
)  # fmt: skip
def test_the_cri_rules_name_what_containerd_would_refuse(
    document: dict[str, Any], version: int, problem: str
) -> None:
    assert any(problem in found for found in containerd.cri_problems(document, version))


def test_containerd_2_keeps_its_built_in_runc_beside_a_declared_runtime() -> None:
    declared = {"plugins": {"io.containerd.cri.v1.runtime": {"containerd": {"runtimes": {
        "kata": {"runtime_type": "io.containerd.kata.v2"}}}}}}  # fmt: skip
    assert containerd.cri_problems({"version": 3, **declared}, 3) == []
