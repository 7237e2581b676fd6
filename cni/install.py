"""`smarter-cni install`: put the plugin and its conflist where the node's containerd looks.

The CNI DaemonSet's init step. The directories come from the node's containerd configuration
(`/usr/lib/cni` with Debian's containerd, `/opt/cni/bin` upstream, k3s' data directory on k3s),
unless given. Each file is replaced by rename, so containerd never execs or reads half a file.
With `--bundle`, the bundle the plugin runs on (its own interpreter, scripts/build_bundle.py) is
installed first, at the prefix the plugin's `#!` line names (smarter_common.bundle_install).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from smarter_common import bundle_install, containerd
from smarter_common.atomic import write_atomic
from smarter_common.errors import ConfigError
from smarter_common.hostroot import HostRoot

PLUGIN_NAME = "smarter-cni"


@dataclass(frozen=True)
class Placement:
    """Where the plugin and the conflist go (host paths)."""

    plugin: PurePosixPath
    conflist: PurePosixPath


def placement(
    node: containerd.NodeContainerd,
    conflist_name: str,
    *,
    bin_dir: str | None = None,
    conf_dir: str | None = None,
) -> Placement:
    """The host paths for the plugin and the conflist: given dirs first, then containerd's."""
    return Placement(
        plugin=PurePosixPath(bin_dir or node.cni_bin_dir) / PLUGIN_NAME,
        conflist=PurePosixPath(conf_dir or node.cni_conf_dir) / conflist_name,
    )


def install(
    root: HostRoot,
    plugin: Path,
    conflist: Path,
    *,
    bin_dir: str | None = None,
    conf_dir: str | None = None,
    bundle: Path | None = None,
) -> Placement:
    """Copy `plugin` and `conflist` to the node's CNI directories (after `bundle`, the
    interpreter the plugin names, when given); where they went."""
    from cni import config

    try:
        conflist_bytes = conflist.read_bytes()
        plugin_bytes = plugin.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read what to install: {error}") from error
    # A conflist the plugin would refuse must not reach the node: containerd would use it.
    config.parse(config.load_conflist(conflist))
    if bundle is not None:
        _check_runs_on(plugin, bundle)
    target = placement(containerd.discover(root), conflist.name, bin_dir=bin_dir, conf_dir=conf_dir)
    for host_path in (target.plugin, target.conflist):
        root.path(host_path.parent).mkdir(parents=True, exist_ok=True)
    if bundle is not None:
        bundle_install.install_bundle(root, bundle)
    write_atomic(root.path(target.plugin), plugin_bytes, mode=0o755)
    write_atomic(root.path(target.conflist), conflist_bytes, mode=0o644)
    return target


def _check_runs_on(plugin: Path, bundle: Path) -> None:
    """Refuse a plugin that would not start the interpreter of the bundle installed with it."""
    prefix = bundle_install.bundle_prefix(bundle)
    if bundle_install.prefix_of(plugin) != prefix:
        raise bundle_install.BundleError(
            f"{plugin} does not run on the bundle {bundle} (built for {prefix})",
            hint=f"give --plugin={bundle / PLUGIN_NAME}",
        )


def main(argv: list[str]) -> int:
    """The subcommand; exit codes as smarter_common.entry documents them."""
    from smarter_common import entry
    from smarter_common.cli import add_common_arguments

    parser = argparse.ArgumentParser(
        prog="smarter-cni install",
        description="Install the plugin and its conflist where the node's containerd finds them.",
    )
    add_common_arguments(parser)
    parser.add_argument("--plugin", required=True, type=Path, help="the plugin (zipapp) to copy")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="the host-side bundle the plugin runs on, installed first at the prefix it names",
    )
    parser.add_argument("--conflist", required=True, type=Path, help="the conflist to copy")
    parser.add_argument("--bin-dir", help="host CNI plugin directory (default: containerd's)")
    parser.add_argument("--conf-dir", help="host CNI config directory (default: containerd's)")
    return entry.run(parser.prog, parser, _install_command, argv)


def _install_command(args: argparse.Namespace) -> None:
    from smarter_common.cli import host_root_from
    from smarter_common.logs import get_logger

    target = install(
        host_root_from(args),
        args.plugin,
        args.conflist,
        bin_dir=args.bin_dir,
        conf_dir=args.conf_dir,
        bundle=args.bundle,
    )
    get_logger("cni.install").info(
        "installed", plugin=str(target.plugin), conflist=str(target.conflist)
    )
