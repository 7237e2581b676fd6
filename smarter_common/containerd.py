"""The node's containerd, as our installers need to know it: which config, which schema, CNI dirs.

A gateway runs either a packaged containerd (`/etc/containerd/config.toml`, config schema 1, 2
or 3) or k3s, whose embedded containerd is configured from templates under
`/var/lib/rancher/k3s/agent/etc/containerd` and rendered to `config.toml` there at each start.
Both installers (smarter-cni's and smarter-hybrid-runtime's) start from `discover`, so the
plugin lands in the CNI directory containerd really searches (`/usr/lib/cni` on Debian,
`/opt/cni/bin` upstream, the k3s data directory on k3s).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

from smarter_common.errors import ConfigError
from smarter_common.hostroot import HostRoot

CONTAINERD_CONFIG = PurePosixPath("/etc/containerd/config.toml")
K3S_CONTAINERD_DIR = PurePosixPath("/var/lib/rancher/k3s/agent/etc/containerd")
K3S_CNI_BIN_DIR = "/var/lib/rancher/k3s/data/current/bin"
K3S_CNI_CONF_DIR = "/var/lib/rancher/k3s/agent/etc/cni/net.d"
DEFAULT_CNI_BIN_DIR = "/opt/cni/bin"
DEFAULT_CNI_CONF_DIR = "/etc/cni/net.d"

# Where, in each config schema, the CRI plugin keeps its runtimes and its CNI settings.
_CRI_RUNTIME_PLUGIN = {
    1: ("plugins", "cri"),
    2: ("plugins", "io.containerd.grpc.v1.cri"),
    3: ("plugins", "io.containerd.cri.v1.runtime"),
}


class Flavour(Enum):
    CONTAINERD = "containerd"
    K3S = "k3s"


@dataclass(frozen=True)
class NodeContainerd:
    """What the installers need to know about the node's containerd (host paths)."""

    flavour: Flavour
    config: PurePosixPath
    # The config schema in force; None when containerd runs without a config file.
    version: int | None
    cni_bin_dir: str
    cni_conf_dir: str


def parse_config(text: str, *, source: str) -> dict[str, Any]:
    """containerd's config as a TOML document; ConfigError naming `source` if it is not TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source} is not valid TOML: {error}") from error


def config_version(document: dict[str, Any], *, source: str) -> int:
    """The schema of a containerd config: its `version` (1 when absent, as containerd reads it)."""
    version = document.get("version", 1)
    if version not in _CRI_RUNTIME_PLUGIN:
        raise ConfigError(
            f"{source} has config version {version!r}; containerd knows versions 1, 2 and 3"
        )
    return int(version)


def cri_runtime_plugin(version: int) -> tuple[str, ...]:
    """The key path of the CRI plugin that holds `containerd.runtimes` and `cni`."""
    return _CRI_RUNTIME_PLUGIN[version]


def lookup(document: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at `path` in a TOML document, or None where any part is missing."""
    node: Any = document
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def cni_dirs(document: dict[str, Any], version: int) -> tuple[str, str]:
    """The CNI plugin and config directories a config sets, with containerd's defaults."""
    cni = lookup(document, (*cri_runtime_plugin(version), "cni"))
    cni = cni if isinstance(cni, dict) else {}
    bin_dirs = cni.get("bin_dirs")  # containerd >= 2.1 takes a list
    if isinstance(bin_dirs, list) and bin_dirs and isinstance(bin_dirs[0], str):
        bin_dir = bin_dirs[0]
    else:
        bin_dir = cni.get("bin_dir") or DEFAULT_CNI_BIN_DIR
    conf_dir = cni.get("conf_dir") or DEFAULT_CNI_CONF_DIR
    return str(bin_dir), str(conf_dir)


def discover(root: HostRoot) -> NodeContainerd:
    """The node's containerd: k3s if its agent directory exists, else the packaged one."""
    k3s_dir = root.path(K3S_CONTAINERD_DIR)
    if k3s_dir.is_dir():
        rendered = K3S_CONTAINERD_DIR / "config.toml"
        document = _read(root.path(rendered), rendered)
        version = config_version(document, source=str(rendered)) if document else None
        # k3s renders its own CNI dirs into config.toml; before its first start, its defaults.
        bin_dir, conf_dir = (
            cni_dirs(document, version) if version else (K3S_CNI_BIN_DIR, K3S_CNI_CONF_DIR)
        )
        return NodeContainerd(Flavour.K3S, rendered, version, bin_dir, conf_dir)
    document = _read(root.path(CONTAINERD_CONFIG), CONTAINERD_CONFIG)
    version = config_version(document, source=str(CONTAINERD_CONFIG)) if document else None
    bin_dir, conf_dir = (
        cni_dirs(document, version) if version else (DEFAULT_CNI_BIN_DIR, DEFAULT_CNI_CONF_DIR)
    )
    return NodeContainerd(Flavour.CONTAINERD, CONTAINERD_CONFIG, version, bin_dir, conf_dir)


def _read(path: Path, host_path: PurePosixPath) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return parse_config(text, source=str(host_path))
