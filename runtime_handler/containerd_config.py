"""`smarter-hybrid-runtime install-containerd-config`: give the node's containerd the runtime.

The runtime `hybrid` (RuntimeClass handler) is containerd's runc shim with this program in
runc's place. It is added to the config containerd really reads, never by a drop-in under
`imports`: containerd 1.x replaces a whole plugin section with an imported file's, so a drop-in
naming the CRI plugin would silently reset the node's sandbox image and CNI directories.
- packaged containerd: the runtime's tables are appended to `/etc/containerd/config.toml`
  (a backup of the original is kept once, beside it);
- k3s: `config.toml.tmpl` (containerd 1.x schema) and `config-v3.toml.tmpl` (k3s with
  containerd 2) extend k3s's own `base` template with the runtime.
An existing runtime `hybrid` that is ours is left alone; one that is not is refused, untouched.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from smarter_common import containerd
from smarter_common.atomic import write_atomic
from smarter_common.errors import ConfigError
from smarter_common.hostroot import HostRoot

HANDLER = "hybrid"
BINARY = "/usr/local/bin/smarter-hybrid-runtime"
# A pod may name the board its firmware is built for; the runtime checks it against the
# devicetree before it touches a core.
POD_ANNOTATIONS = ("smarter-edge.io/board",)
BACKUP_SUFFIX = ".smarter-edge.orig"
# k3s' templates by the config schema they produce: k3s with containerd 2 reads the v3 one.
K3S_TEMPLATES = {2: "config.toml.tmpl", 3: "config-v3.toml.tmpl"}
_UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
_TEMPLATE_MARK = "{{/* smarter-hybrid-runtime: the hybrid runtime on top of k3s' base */}}"


class ContainerdConfigError(ConfigError):
    """The node's containerd config cannot be given the hybrid runtime without losing something."""


@dataclass(frozen=True)
class Installed:
    """What the installer did to one file (host path)."""

    path: PurePosixPath
    changed: bool


def runtime_tables(
    version: int, binary: str = BINARY, extra_options: Mapping[str, str] | None = None
) -> str:
    """The TOML tables that define the runtime in a config of schema `version`.

    `extra_options` are further runc shim options (e.g. `Root`, the runc state directory).
    """
    plugin = ".".join(_toml_key(key) for key in containerd.cri_runtime_plugin(version))
    table = f"{plugin}.containerd.runtimes.{HANDLER}"
    annotations = ", ".join(json.dumps(name) for name in POD_ANNOTATIONS)
    options = {"BinaryName": binary, **(extra_options or {})}
    option_lines = "".join(f"  {key} = {json.dumps(value)}\n" for key, value in options.items())
    return (
        f"[{table}]\n"
        '  runtime_type = "io.containerd.runc.v2"\n'
        f"  pod_annotations = [{annotations}]\n"
        "\n"
        f"[{table}.options]\n"
        f"{option_lines}"
    )


def with_runtime(
    text: str,
    *,
    binary: str = BINARY,
    source: str,
    extra_options: Mapping[str, str] | None = None,
) -> str | None:
    """`text` (a containerd config) with the runtime added; None when it already has it.

    Raises ContainerdConfigError, naming `source`, when the config is not TOML, has a schema
    containerd does not know, or already defines a runtime `hybrid` that runs something else.
    """
    if not text.strip():
        return f"version = 2\n\n{runtime_tables(2, binary, extra_options)}"
    document = containerd.parse_config(text, source=source)
    version = containerd.config_version(document, source=source)
    path = (*containerd.cri_runtime_plugin(version), "containerd", "runtimes", HANDLER)
    present = containerd.lookup(document, path)
    if present is not None:
        _check_ours(present, binary, table=".".join(path), source=source)
        return None
    separator = "" if text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n"
    updated = f"{text}{separator}{runtime_tables(version, binary, extra_options)}"
    try:
        containerd.parse_config(updated, source=source)
    except ConfigError as error:
        raise ContainerdConfigError(
            f"{source} defines its runtimes in a way the runtime's tables cannot be appended to"
            f" ({error})",
            hint=f"add these tables yourself:\n{runtime_tables(version, binary)}",
        ) from error
    return updated


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def k3s_template(version: int, binary: str = BINARY) -> str:
    """A k3s containerd template: k3s' own configuration, then the runtime."""
    return f'{_TEMPLATE_MARK}\n{{{{ template "base" . }}}}\n\n{runtime_tables(version, binary)}'


def _check_ours(present: object, binary: str, *, table: str, source: str) -> None:
    options = present.get("options") if isinstance(present, dict) else None
    found = options.get("BinaryName") if isinstance(options, dict) else None
    if found != binary:
        raise ContainerdConfigError(
            f"{source} already defines [{table}] with BinaryName {found!r}, not {binary!r}",
            hint="remove or rename that runtime, or point it at the hybrid runtime",
        )


def install(root: HostRoot, *, binary: str = BINARY) -> list[Installed]:
    """Give the node's containerd the runtime; what was written (nothing when it had it)."""
    node = containerd.discover(root)
    if node.flavour is containerd.Flavour.K3S:
        return [_install_k3s_template(root, version, binary) for version in K3S_TEMPLATES]
    return [_install_into_config(root, node.config, binary)]


def _install_into_config(root: HostRoot, host_path: PurePosixPath, binary: str) -> Installed:
    path = root.path(host_path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    updated = with_runtime(text, binary=binary, source=str(host_path))
    if updated is None:
        return Installed(host_path, changed=False)
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if text and not backup.exists():
        shutil.copy2(path, backup)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, updated)
    return Installed(host_path, changed=True)


def _install_k3s_template(root: HostRoot, version: int, binary: str) -> Installed:
    host_path = containerd.K3S_CONTAINERD_DIR / K3S_TEMPLATES[version]
    path = root.path(host_path)
    wanted = k3s_template(version, binary)
    try:
        current = path.read_text()
    except FileNotFoundError:
        current = None
    if current == wanted:
        return Installed(host_path, changed=False)
    if current is not None and not current.startswith(_TEMPLATE_MARK):
        if f"containerd.runtimes.{HANDLER}" in current:
            return Installed(host_path, changed=False)  # the operator's own, already with it
        raise ContainerdConfigError(
            f"{host_path} is the node's own k3s template and has no runtime {HANDLER!r}",
            hint=f"append these tables to it:\n{runtime_tables(version, binary)}",
        )
    write_atomic(path, wanted)
    return Installed(host_path, changed=True)


def systemd_unit(root: HostRoot, node: containerd.NodeContainerd) -> str:
    """The unit that runs the node's containerd: containerd's own, or k3s' server or agent."""
    if node.flavour is containerd.Flavour.CONTAINERD:
        return "containerd.service"
    for unit in ("k3s-agent.service", "k3s.service"):
        if any(root.path(f"{d}/{unit}").exists() for d in _UNIT_DIRS):
            return unit
    return "k3s.service"


def restart_command(unit: str) -> list[str]:
    """How an installer in a privileged host-PID pod restarts `unit` on the host."""
    host = ["nsenter", "--target=1", "--mount", "--uts", "--ipc", "--net", "--pid", "--"]
    return [*host, "systemctl", "try-restart", unit]


def main(argv: list[str]) -> int:
    """The subcommand: install, report each file as one JSON line, restart if asked and needed."""
    from smarter_common.cli import add_common_arguments, configure_logging_from, host_root_from
    from smarter_common.logs import get_logger

    parser = argparse.ArgumentParser(
        prog="smarter-hybrid-runtime install-containerd-config",
        description="Add the runtime 'hybrid' to the node's containerd (or k3s) configuration.",
    )
    add_common_arguments(parser)
    parser.add_argument("--binary", default=BINARY, help=f"the runtime's path (default {BINARY})")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="restart containerd (or k3s) when its configuration changed (needs host PID 1)",
    )
    args = parser.parse_args(argv)
    configure_logging_from(args)
    log = get_logger("runtime_handler.install")
    root = host_root_from(args)
    try:
        written = install(root, binary=args.binary)
    except ConfigError as error:
        log.error("containerd_config_refused", error=str(error))
        return 1
    for item in written:
        log.info("containerd_config", path=str(item.path), changed=item.changed)
    if args.restart and any(item.changed for item in written):
        command = restart_command(systemd_unit(root, containerd.discover(root)))
        log.info("containerd_restart", command=command)
        return subprocess.run(command, check=False).returncode
    return 0
