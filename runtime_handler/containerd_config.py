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

The node's existing runtimes keep working: containerd 1.x takes a config's runtimes table as
the whole runtimes map, so where the config declares none (Debian's packaged config), the
built-in `runc` is declared beside `hybrid` as containerd's own default has it. Before writing,
the result is checked against the CRI plugin's rules (`containerd.cri_problems`) and, where a
`containerd` of the same major schema is on PATH, by `containerd config dump` of the result;
a config that would not load is refused with the reason, the file left byte-for-byte as it was.

With `--bundle DIR` (the runtime DaemonSet's), it first installs the host-side bundle the
runtime runs on (smarter_common.bundle_install), then the bundle's runtime at `--binary`, both
by rename, so the runtime's interpreter is there before the runtime and before containerd is
told about it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

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
_TEMPLATE_BASE = '{{ template "base" . }}'
# The schemas a containerd of each major version reads (2.x migrates 1 and 2 on load).
_SCHEMAS_READ = {1: (1, 2), 2: (1, 2, 3)}
_DRY_RUN_TIMEOUT = 30.0
# containerd 1.6/1.7's default runc options, in their order (all zero values).
_RUNC_DEFAULT_OPTIONS = (
    ("NoPivotRoot", "false"),
    ("NoNewKeyring", "false"),
    ("ShimCgroup", '""'),
    ("IoUid", "0"),
    ("IoGid", "0"),
    ("BinaryName", '""'),
    ("Root", '""'),
    ("CriuPath", '""'),
    ("SystemdCgroup", "false"),
    ("CriuImagePath", '""'),
    ("CriuWorkPath", '""'),
)


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


def builtin_runtime_tables(version: int) -> str:
    """containerd's built-in `runc` runtime, declared exactly as containerd 1.6/1.7 default it.

    Their `DefaultConfig` (pkg/cri/config/config_unix.go) gives runtime_type
    io.containerd.runc.v2 and these runc options, all zero values; 1.7 fills an empty
    sandbox_mode with `podsandbox` itself. `containerd config dump` shows the same runtime
    before and after.
    """
    plugin = ".".join(_toml_key(key) for key in containerd.cri_runtime_plugin(version))
    table = f"{plugin}.containerd.runtimes.{containerd.BUILTIN_RUNTIME}"
    options = "".join(f"  {key} = {value}\n" for key, value in _RUNC_DEFAULT_OPTIONS)
    return (
        "# containerd's built-in runtime, declared because a runtimes table replaces it\n"
        f"[{table}]\n"
        f'  runtime_type = "{containerd.RUNC_SHIM}"\n'
        "\n"
        f"[{table}.options]\n"
        f"{options}"
    )


def with_runtime(
    text: str,
    *,
    binary: str = BINARY,
    source: str,
    extra_options: Mapping[str, str] | None = None,
) -> str | None:
    """`text` (a containerd config) with the runtime added; None when it already has it.

    The node's runtimes are kept: where the config declares none, containerd's built-in `runc`
    is declared with `hybrid` (see `builtin_runtime_tables`). Raises ContainerdConfigError,
    naming `source`, when the config is not TOML, has a schema containerd does not know,
    already defines a runtime `hybrid` that runs something else, or would not (or already
    does not) load in containerd's CRI plugin.
    """
    document = containerd.parse_config(text, source=source) if text.strip() else {}
    version = containerd.config_version(document, source=source) if document else 2
    path = (*containerd.cri_runtime_plugin(version), "containerd", "runtimes", HANDLER)
    present = containerd.lookup(document, path)
    if present is not None:
        _check_ours(present, binary, table=".".join(path), source=source)
        return None
    _refuse_if_problems(
        containerd.cri_problems(document, version),
        source=source,
        what="containerd's CRI plugin does not load it as it is",
        hint="fix the node's containerd config first; nothing was changed",
    )
    tables = runtime_tables(version, binary, extra_options)
    if _replaces_builtin_runtimes(document, version):
        tables = f"{builtin_runtime_tables(version)}\n{tables}"
    head = text if text.strip() else "version = 2\n"
    separator = "" if head.endswith("\n\n") else "\n" if head.endswith("\n") else "\n\n"
    updated = f"{head}{separator}{tables}"
    try:
        result = containerd.parse_config(updated, source=source)
    except ConfigError as error:
        raise ContainerdConfigError(
            f"{source} defines its runtimes in a way the runtime's tables cannot be appended to"
            f" ({error})",
            hint=f"add these tables yourself:\n{runtime_tables(version, binary)}",
        ) from error
    _refuse_if_problems(
        containerd.cri_problems(result, version),
        source=source,
        what="with the runtime added, containerd's CRI plugin would not load it",
        hint=f"add these tables yourself where they fit:\n{tables}",
    )
    return updated


def _replaces_builtin_runtimes(document: dict[str, object], version: int) -> bool:
    """Whether adding a runtimes table would drop containerd 1.x's built-in `runc`."""
    if version == 3:
        return False  # containerd 2.x adds declared runtimes to its own
    plugin = containerd.lookup(document, containerd.cri_runtime_plugin(version)) or {}
    declared = containerd.lookup(plugin, ("containerd", "runtimes"))
    default = containerd.lookup(plugin, ("containerd", "default_runtime_name"))
    legacy_default = containerd.lookup(plugin, ("containerd", "default_runtime", "runtime_type"))
    return declared is None and default in (None, containerd.BUILTIN_RUNTIME) and not legacy_default


def _refuse_if_problems(problems: list[str], *, source: str, what: str, hint: str) -> None:
    if problems:
        raise ContainerdConfigError(f"{source}: {what}: {'; '.join(problems)}", hint=hint)


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def k3s_template(version: int, binary: str = BINARY) -> str:
    """A k3s containerd template: k3s' own configuration, then the runtime."""
    return f'{_TEMPLATE_MARK}\n{{{{ template "base" . }}}}\n\n{runtime_tables(version, binary)}'


def render_k3s_template(template: str, base: str) -> str:
    """What k3s renders from one of our templates, given what its `base` template renders.

    Our templates use Go text/template only for the comment and the `base` call, so this is
    exactly what k3s' ParseTemplateFromConfig produces from them.
    """
    body = template.removeprefix(f"{_TEMPLATE_MARK}\n")
    return body.replace(_TEMPLATE_BASE, base.rstrip("\n"), 1)


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
    dry_run(updated, directory=path.parent, source=str(host_path), imports_readable=_is_host(root))
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
    _check_k3s_render(root, version, wanted, source=str(host_path))
    write_atomic(path, wanted)
    return Installed(host_path, changed=True)


def _check_k3s_render(root: HostRoot, version: int, template: str, *, source: str) -> None:
    """Refuse a template whose render on this node (k3s' last `base` output) would not load.

    k3s renders `config.toml` from its `base` template at each start; the last render is the
    best view of what `base` gives on this node. Before k3s' first start there is none, and
    k3s' base always declares `runc`.
    """
    rendered = root.path(containerd.K3S_CONTAINERD_DIR / "config.toml")
    try:
        base = rendered.read_text()
    except FileNotFoundError:
        return
    if f"containerd.runtimes.{HANDLER}" in base:
        return  # rendered from our template already: not k3s' base alone
    document = containerd.parse_config(base, source=str(rendered)) if base.strip() else {}
    if (containerd.config_version(document, source=str(rendered)) if document else 2) != version:
        return  # k3s renders the other template on this node
    text = render_k3s_template(template, base)
    result = containerd.parse_config(text, source=f"{source} (rendered)")
    _refuse_if_problems(
        containerd.cri_problems(result, version),
        source=source,
        what="rendered on this node's k3s base, containerd's CRI plugin would not load it",
        hint="see k3s' rendered config.toml beside it",
    )


def _is_host(root: HostRoot) -> bool:
    return root.root.resolve() == Path("/")


def dry_run(text: str, *, directory: Path, source: str, imports_readable: bool = True) -> None:
    """Have the node's own `containerd` read `text`; refuse what it cannot load.

    Runs `containerd --config <tmp> config dump` when a containerd that reads this schema is
    on PATH (the runtime DaemonSet's image or the node), and checks its decoded CRI config
    with `containerd.cri_problems`. Skipped without such a containerd, and when the config
    imports other files but the host root is not `/` (the imports name host paths). Nothing
    is left behind.
    """
    document = containerd.parse_config(text, source=source)
    version = containerd.config_version(document, source=source)
    major = _containerd_major()
    if major is None or version not in _SCHEMAS_READ.get(major, ()):
        return
    if document.get("imports") and not imports_readable:
        return
    directory.mkdir(parents=True, exist_ok=True)
    # Beside the target, so relative imports resolve as they will for the real file.
    probe = directory / f".{Path(source).name}.smarter-edge-check-{os.getpid()}"
    try:
        probe.write_text(text)
        dumped = subprocess.run(
            ["containerd", "--config", str(probe), "config", "dump"],
            capture_output=True,
            text=True,
            timeout=_DRY_RUN_TIMEOUT,
            check=False,
        )
    finally:
        probe.unlink(missing_ok=True)
    if dumped.returncode != 0:
        reason = (dumped.stderr.strip().splitlines() or ["no output"])[-1]
        raise ContainerdConfigError(
            f"{source}: containerd {major}.x cannot read it with the runtime added: {reason}",
            hint="nothing was changed",
        )
    decoded = tomllib.loads(dumped.stdout)
    _refuse_if_problems(
        containerd.cri_problems(decoded, int(decoded.get("version", version)), decoded=True),
        source=source,
        what=f"with the runtime added, containerd {major}.x's CRI plugin would not load it",
        hint="nothing was changed",
    )


def _containerd_major() -> int | None:
    """The major version of the `containerd` on PATH; None when there is none."""
    if shutil.which("containerd") is None:
        return None
    try:
        out = subprocess.run(
            ["containerd", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"\sv?(\d+)\.\d+", out)
    return int(found.group(1)) if found else None


def install_runtime(root: HostRoot, bundle: Path, *, binary: str = BINARY) -> None:
    """The bundle at its prefix, then its runtime at `binary` (host paths under `root`)."""
    from smarter_common import bundle_install
    from smarter_common.logs import get_logger

    log = get_logger("runtime_handler.install")
    installed = bundle_install.install_bundle(root, bundle)
    log.info(
        "bundle_installed",
        prefix=str(installed.prefix),
        written=installed.written,
        unchanged=installed.unchanged,
    )
    changed = bundle_install.install_program(
        root, bundle, "smarter-hybrid-runtime", PurePosixPath(binary)
    )
    log.info("runtime_installed", path=binary, changed=changed)


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
    """The subcommand: install, log each file, restart if asked and needed; exit codes as
    smarter_common.entry documents them (a refused config: one stderr line, exit 2)."""
    from smarter_common import entry
    from smarter_common.cli import add_common_arguments

    parser = argparse.ArgumentParser(
        prog="smarter-hybrid-runtime install-containerd-config",
        description="Add the runtime 'hybrid' to the node's containerd (or k3s) configuration.",
    )
    add_common_arguments(parser)
    parser.add_argument("--binary", default=BINARY, help=f"the runtime's path (default {BINARY})")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="the host-side bundle (scripts/build_bundle.py): install it at the prefix it was"
        " built for, and its runtime at --binary, before the configuration",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="restart containerd (or k3s) when its configuration changed (needs host PID 1)",
    )
    return entry.run(parser.prog, parser, _install_command, argv)


def _install_command(args: argparse.Namespace) -> int:
    from smarter_common.cli import host_root_from
    from smarter_common.logs import get_logger

    log = get_logger("runtime_handler.install")
    root = host_root_from(args)
    if args.bundle is not None:
        install_runtime(root, args.bundle, binary=args.binary)
    written = install(root, binary=args.binary)
    for item in written:
        log.info("containerd_config", path=str(item.path), changed=item.changed)
    if args.restart and any(item.changed for item in written):
        command = restart_command(systemd_unit(root, containerd.discover(root)))
        log.info("containerd_restart", command=command)
        return subprocess.run(command, check=False).returncode
    return 0
