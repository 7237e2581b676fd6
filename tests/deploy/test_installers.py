"""The DaemonSets' installers put the plugin, the conflist and the runtime where a node needs them.

Host roots are temporary directories laid out like a Debian, upstream or k3s node; containerd
itself (Debian's) reads every config the runtime installer writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from cni import install as cni_install
from runtime_handler import containerd_config
from runtime_handler.containerd_config import ContainerdConfigError, with_runtime
from smarter_common import containerd
from smarter_common.errors import ConfigError, SmarterError
from smarter_common.hostroot import HostRoot

REPO = Path(__file__).resolve().parents[2]
CONFLIST = REPO / "deploy" / "cni" / "10-smarter.conflist"
DEBIAN_CONFIG = """\
version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.example/pause:3.9"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
"""
K3S_RENDERED = """\
version = 2
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/var/lib/rancher/k3s/data/current/bin"
  conf_dir = "/var/lib/rancher/k3s/agent/etc/cni/net.d"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"""


def _node(tmp_path: Path, config: str | None = None, *, k3s: bool = False) -> HostRoot:
    root = tmp_path / "host"
    target = root / (
        "var/lib/rancher/k3s/agent/etc/containerd/config.toml"
        if k3s
        else "etc/containerd/config.toml"
    )
    target.parent.mkdir(parents=True)
    if config is not None:
        target.write_text(config)
    return HostRoot(root)


def _dump(config: Path) -> dict[str, object]:
    """The configuration containerd itself reads from `config` (its defaults filled in)."""
    dumped = subprocess.run(
        ["containerd", "--config", str(config), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return tomllib.loads(dumped.stdout)


def _cri(dumped: dict[str, object]) -> dict[str, Any]:
    cri = containerd.lookup(dumped, ("plugins", "io.containerd.grpc.v1.cri"))
    assert isinstance(cri, dict)
    return cri


def test_containerd_reads_the_runtime_and_keeps_the_nodes_own_settings(tmp_path: Path) -> None:
    root = _node(tmp_path, DEBIAN_CONFIG)
    (written,) = containerd_config.install(root)
    assert written == containerd_config.Installed(containerd.CONTAINERD_CONFIG, changed=True)
    cri = _cri(_dump(root.path(containerd.CONTAINERD_CONFIG)))
    runtime = containerd.lookup(cri, ("containerd", "runtimes", "hybrid"))
    assert runtime["runtime_type"] == "io.containerd.runc.v2"
    assert runtime["options"]["BinaryName"] == "/usr/local/bin/smarter-hybrid-runtime"
    assert runtime["pod_annotations"] == ["smarter-edge.io/board"]
    assert cri["sandbox_image"] == "registry.example/pause:3.9"
    assert cri["cni"]["bin_dir"] == "/usr/lib/cni"


def test_a_second_install_changes_nothing_and_the_original_is_kept_once(tmp_path: Path) -> None:
    root = _node(tmp_path, DEBIAN_CONFIG)
    config = root.path(containerd.CONTAINERD_CONFIG)
    containerd_config.install(root)
    first = config.read_bytes()
    (again,) = containerd_config.install(root)
    assert not again.changed
    assert config.read_bytes() == first
    backup = config.with_name("config.toml" + containerd_config.BACKUP_SUFFIX)
    assert backup.read_text() == DEBIAN_CONFIG


def test_a_version_1_config_gets_the_runtime_under_the_cri_plugin(tmp_path: Path) -> None:
    root = _node(tmp_path, '[plugins.cri]\n  sandbox_image = "registry.example/pause:3.9"\n')
    containerd_config.install(root)
    dumped = _dump(root.path(containerd.CONTAINERD_CONFIG))
    cri = containerd.lookup(dumped, ("plugins", "cri")) or _cri(dumped)
    assert containerd.lookup(cri, ("containerd", "runtimes", "hybrid", "options", "BinaryName"))
    assert cri["sandbox_image"] == "registry.example/pause:3.9"


def test_a_node_without_a_config_gets_one_containerd_reads(tmp_path: Path) -> None:
    root = _node(tmp_path)
    containerd_config.install(root)
    cri = _cri(_dump(root.path(containerd.CONTAINERD_CONFIG)))
    assert "hybrid" in cri["containerd"]["runtimes"]
    assert cri["cni"]["bin_dir"] == "/opt/cni/bin"  # containerd's default, untouched


def test_a_version_3_config_gets_the_runtime_under_the_cri_runtime_plugin() -> None:
    updated = with_runtime("version = 3\n", source="config.toml")
    assert updated is not None
    runtime = containerd.lookup(
        tomllib.loads(updated),
        ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes", "hybrid"),
    )
    assert runtime["options"]["BinaryName"] == containerd_config.BINARY


def test_another_runtime_named_hybrid_is_refused_and_the_config_untouched(tmp_path: Path) -> None:
    theirs = DEBIAN_CONFIG + (
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hybrid.options]\n'
        '  BinaryName = "/opt/vendor/bin/other-runtime"\n'
    )
    root = _node(tmp_path, theirs)
    with pytest.raises(ContainerdConfigError) as refused:
        containerd_config.install(root)
    assert str(refused.value).startswith(
        "/etc/containerd/config.toml already defines [plugins.io.containerd.grpc.v1.cri."
        "containerd.runtimes.hybrid] with BinaryName '/opt/vendor/bin/other-runtime'"
    )
    assert root.path(containerd.CONTAINERD_CONFIG).read_text() == theirs
    assert sorted(p.name for p in root.path("/etc/containerd").iterdir()) == ["config.toml"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("version = 2\n[plugins\n", "/etc/containerd/config.toml is not valid TOML"),
        ("version = 7\n", "/etc/containerd/config.toml has config version 7"),
        (
            'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n'
            '  runtimes = {runc = {runtime_type = "io.containerd.runc.v2"}}\n',
            "/etc/containerd/config.toml defines its runtimes in a way the runtime's tables"
            " cannot be appended to",
        ),
    ],
    ids=["not-toml", "unknown-version", "inline-runtimes"],
)
def test_a_config_that_cannot_take_the_runtime_is_refused_untouched(
    tmp_path: Path, config: str, message: str
) -> None:
    root = _node(tmp_path, config)
    with pytest.raises(ConfigError) as refused:
        containerd_config.install(root)
    assert str(refused.value).startswith(message)
    assert root.path(containerd.CONTAINERD_CONFIG).read_text() == config


def test_k3s_gets_both_templates_on_top_of_its_base(tmp_path: Path) -> None:
    root = _node(tmp_path, K3S_RENDERED, k3s=True)
    written = containerd_config.install(root)
    directory = containerd.K3S_CONTAINERD_DIR
    assert written == [
        containerd_config.Installed(directory / "config.toml.tmpl", changed=True),
        containerd_config.Installed(directory / "config-v3.toml.tmpl", changed=True),
    ]
    v2 = root.path(directory / "config.toml.tmpl").read_text()
    v3 = root.path(directory / "config-v3.toml.tmpl").read_text()
    assert '{{ template "base" . }}' in v2 and '{{ template "base" . }}' in v3
    assert '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hybrid]' in v2
    assert '[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.hybrid]' in v3
    assert not any(item.changed for item in containerd_config.install(root))


def test_an_operators_own_k3s_template_is_never_overwritten(tmp_path: Path) -> None:
    root = _node(tmp_path, K3S_RENDERED, k3s=True)
    own = root.path(containerd.K3S_CONTAINERD_DIR / "config.toml.tmpl")
    own.write_text('{{ template "base" . }}\n[plugins."io.containerd.grpc.v1.cri".registry]\n')
    with pytest.raises(ContainerdConfigError) as refused:
        containerd_config.install(root)
    assert "is the node's own k3s template and has no runtime 'hybrid'" in str(refused.value)
    assert "containerd.runtimes.hybrid]" in str(refused.value)  # the tables to add
    assert own.read_text().endswith(".registry]\n")


def test_the_restart_targets_the_unit_that_runs_containerd(tmp_path: Path) -> None:
    plain = _node(tmp_path / "plain", DEBIAN_CONFIG)
    agent = _node(tmp_path / "agent", K3S_RENDERED, k3s=True)
    agent.path("/etc/systemd/system").mkdir(parents=True)
    agent.path("/etc/systemd/system/k3s-agent.service").touch()
    assert containerd_config.systemd_unit(plain, containerd.discover(plain)) == "containerd.service"
    assert containerd_config.systemd_unit(agent, containerd.discover(agent)) == "k3s-agent.service"
    assert containerd_config.restart_command("k3s-agent.service")[-3:] == [
        "systemctl", "try-restart", "k3s-agent.service",
    ]  # fmt: skip


def test_the_shipped_k3s_templates_are_what_the_installer_writes() -> None:
    runtime = REPO / "deploy" / "runtime"
    for version, name in containerd_config.K3S_TEMPLATES.items():
        assert (runtime / f"k3s-{name}").read_text() == containerd_config.k3s_template(version)


@pytest.mark.parametrize(
    ("config", "k3s", "bin_dir", "conf_dir"),
    [
        (DEBIAN_CONFIG, False, "/usr/lib/cni", "/etc/cni/net.d"),
        (None, False, "/opt/cni/bin", "/etc/cni/net.d"),
        (K3S_RENDERED, True, containerd.K3S_CNI_BIN_DIR, containerd.K3S_CNI_CONF_DIR),
        (None, True, containerd.K3S_CNI_BIN_DIR, containerd.K3S_CNI_CONF_DIR),
    ],
    ids=["debian", "upstream", "k3s", "k3s-before-first-start"],
)
def test_the_plugin_lands_where_the_nodes_containerd_looks(
    tmp_path: Path, config: str | None, k3s: bool, bin_dir: str, conf_dir: str
) -> None:
    root = _node(tmp_path, config, k3s=k3s)
    plugin = tmp_path / "smarter-cni"
    plugin.write_bytes(b"#!/usr/bin/env python3\n")
    target = cni_install.install(root, plugin, CONFLIST)
    assert target == cni_install.Placement(
        plugin=PurePosixPath(bin_dir) / "smarter-cni",
        conflist=PurePosixPath(conf_dir) / "10-smarter.conflist",
    )
    installed = root.path(target.plugin)
    assert installed.read_bytes() == plugin.read_bytes()
    assert os.stat(installed).st_mode & 0o777 == 0o755
    assert root.path(target.conflist).read_bytes() == CONFLIST.read_bytes()


def test_a_conflist_the_plugin_would_refuse_is_not_installed(tmp_path: Path) -> None:
    root = _node(tmp_path, DEBIAN_CONFIG)
    plugin = tmp_path / "smarter-cni"
    plugin.write_bytes(b"#!/usr/bin/env python3\n")
    broken = tmp_path / "10-smarter.conflist"
    conflist = json.loads(CONFLIST.read_text())
    conflist["plugins"][0]["subnet"] = "10.210.0.0/33"
    broken.write_text(json.dumps(conflist))
    with pytest.raises(SmarterError) as refused:
        cni_install.install(root, plugin, broken)
    assert "subnet" in str(refused.value)
    assert not root.path("/usr/lib/cni").exists()
    assert not root.path("/etc/cni").exists()
