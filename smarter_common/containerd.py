"""The node's containerd, as our installers need to know it: which config, which schema, CNI dirs.

A gateway runs either a packaged containerd (`/etc/containerd/config.toml`, config schema 1, 2
or 3) or k3s, whose embedded containerd is configured from templates under
`/var/lib/rancher/k3s/agent/etc/containerd` and rendered to `config.toml` there at each start.
Both installers (smarter-cni's and smarter-hybrid-runtime's) start from `discover`, so the
plugin lands in the CNI directory containerd really searches (`/usr/lib/cni` on Debian,
`/opt/cni/bin` upstream, the k3s data directory on k3s).

`cri_problems` restates the rules by which containerd's CRI plugin refuses to load a config
(containerd 1.6/1.7 `pkg/cri/config.ValidatePluginConfig`, 2.x `internal/cri/config`), so an
installer can tell before writing whether the node would still serve the kubelet. The one
that matters most: containerd 1.x decodes the CRI plugin's table over its defaults with go-toml
v1, which replaces a map it finds in the file, so a config that declares any
`containerd.runtimes` table has exactly the runtimes it declares, and the built-in `runc` is
gone unless declared too. containerd 2.x (go-toml v2) adds declared runtimes to the built-in one.
"""

from __future__ import annotations

import json
import re
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

# containerd's built-in runtime (every version): `default_runtime_name` unless the config says.
BUILTIN_RUNTIME = "runc"
RUNC_SHIM = "io.containerd.runc.v2"
# A runtime_type containerd resolves to a shim binary: io.containerd.<name>.v<N> finds
# containerd-shim-<name>-v<N> on PATH (containerd 2.x also takes a shim's absolute path).
_SHIM_TYPE = re.compile(r"io\.containerd\.[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.v[0-9]+")
_RUNTIME_V1_LINUX = "io.containerd.runtime.v1.linux"

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


def cri_problems(document: dict[str, Any], version: int, *, decoded: bool = False) -> list[str]:
    """Why containerd's CRI plugin would not load (or not serve pods from) `document`.

    `document` is a config as written (the built-in runtimes added as containerd would), or,
    with `decoded`, what `containerd config dump` printed (the runtimes map is then final).
    Empty when the CRI plugin loads with a default runtime it can run.
    """
    problems: list[str] = []
    disabled = document.get("disabled_plugins") or []
    for plugin_id in ("cri", "io.containerd.grpc.v1.cri"):
        if plugin_id in disabled:
            problems.append(
                f"the CRI plugin is disabled (disabled_plugins names {plugin_id!r}): no kubelet"
                " can use this containerd"
            )
    plugin = _cri_runtime_table(document, version)
    runtimes = lookup(plugin, ("containerd", "runtimes"))
    if runtimes is not None and not isinstance(runtimes, dict):
        return [*problems, "containerd.runtimes is not a table"]
    declared: dict[str, Any] = dict(runtimes or {})
    names = set(declared)
    if not decoded and (runtimes is None or version == 3):
        names.add(BUILTIN_RUNTIME)
    default = lookup(plugin, ("containerd", "default_runtime_name"))
    default = BUILTIN_RUNTIME if default is None else default
    if version < 3:
        for legacy, name in (
            ("untrusted_workload_runtime", "untrusted"),
            ("default_runtime", "default"),
        ):
            if lookup(plugin, ("containerd", legacy, "runtime_type")):
                if name == "untrusted" and name in declared:
                    problems.append(
                        "conflicting definitions: both `untrusted_workload_runtime` and"
                        ' `runtimes["untrusted"]`'
                    )
                names.add(name)
                default = name if name == "default" else default
    if not default:
        problems.append("`default_runtime_name` is empty")
    elif default not in names:
        problems.append(
            "no corresponding runtime configured in `containerd.runtimes` for `containerd`"
            f" `default_runtime_name = {json.dumps(default)}` (runtimes: {sorted(names)})"
        )
    for name, runtime in declared.items():
        problems.extend(_runtime_problems(name, runtime, version))
    return problems


def _runtime_problems(name: str, runtime: object, version: int) -> list[str]:
    if not isinstance(runtime, dict):
        return [f"runtime {name!r} is not a table"]
    problems = []
    kind = runtime.get("runtime_type", "")
    known = (
        not kind
        or _SHIM_TYPE.fullmatch(str(kind)) is not None
        or (version == 3 and str(kind).startswith("/"))
    )
    if not known or (version == 3 and kind == _RUNTIME_V1_LINUX):
        problems.append(f"runtime {name!r} has runtime_type {kind!r}, which names no shim")
    for legacy in ("runtime_engine", "runtime_root"):
        if runtime.get(legacy) and kind != _RUNTIME_V1_LINUX:
            problems.append(f"runtime {name!r}: `{legacy}` only works for {_RUNTIME_V1_LINUX}")
    options = runtime.get("options")
    if options is not None and not isinstance(options, dict):
        problems.append(f"runtime {name!r}: options is not a table")
    return problems


def _cri_runtime_table(document: dict[str, Any], version: int) -> dict[str, Any]:
    """The CRI table holding `containerd.runtimes`; a dump of a v1 config uses either name."""
    for path in (cri_runtime_plugin(version), *_CRI_RUNTIME_PLUGIN.values()):
        found = lookup(document, path)
        if isinstance(found, dict):
            return found
    return {}


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
