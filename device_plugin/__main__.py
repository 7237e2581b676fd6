"""Entry point of `smarter-device-manager`: serve /dev devices and remote cores to the kubelet,
or with `--list` print what would be served and exit."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from device_plugin.rules import Rule, load_rules
from device_plugin.sources import PATH_VIEWS, Offer, PathView
from smarter_common import entry
from smarter_common.cli import add_common_arguments, host_root_from
from smarter_common.errors import ConfigError
from smarter_common.hostroot import HostRoot

DEFAULT_RULES = Path("/etc/smarter-device-manager/conf.yaml")
# The node's own kubelet directory: like the rules file it is a path of this process's
# filesystem, not of the host root (a simulated gateway's root has no kubelet of its own).
DEFAULT_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
PROGRAM = "smarter-device-manager"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="kubelet device plugin: /dev devices and remote cores as extended resources.",
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--rules",
        metavar="FILE",
        type=Path,
        default=DEFAULT_RULES,
        help=f"YAML rules file, re-read when it changes (default {DEFAULT_RULES})",
    )
    parser.add_argument(
        "--plugin-dir",
        metavar="DIR",
        type=Path,
        default=DEFAULT_PLUGIN_DIR,
        help=f"the kubelet's device plugin directory, not moved by --host-root "
        f"(default {DEFAULT_PLUGIN_DIR})",
    )
    parser.add_argument(
        "--device-paths",
        choices=PATH_VIEWS,
        default="host",
        help="paths handed to the kubelet: as the host sees them (host root = the host's / "
        "mounted here; default), or as this process sees them (local: the host root is a "
        "directory on the kubelet's own machine, e.g. the simulated gateway)",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="print the resources, device IDs and paths this host would get, then exit",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    _without_tls()
    return entry.run(PROGRAM, _parser(), _command, argv)


def _command(args: argparse.Namespace) -> int:
    host = host_root_from(args)
    plugin_dir: Path = args.plugin_dir
    rules = load_rules(args.rules)
    if not host.dev.is_dir():
        raise ConfigError(
            f"{host.dev} is not a directory", hint="--host-root must hold the host's /dev"
        )
    if args.list:
        print(format_offers(_offers(host, rules, args.device_paths)), end="")
        return 0
    import asyncio  # only now: see _without_tls

    return asyncio.run(_serve(host, args.rules, plugin_dir, rules, args.device_paths))


def _offers(host: HostRoot, rules: list[Rule], view: PathView) -> list[Offer]:
    from device_plugin.dev_source import DevSource
    from device_plugin.remoteproc_source import RemoteprocSource

    return [
        *DevSource(host, rules, view).scan(),
        *RemoteprocSource(host, view).scan(),
    ]


def format_offers(offers: list[Offer]) -> str:
    """One line per resource: name, device IDs, paths (`container=host` when they differ), envs."""
    rows = [("RESOURCE", "IDS", "PATHS", "ENV")]
    for offer in offers:
        if len(offer.ids) > 2:
            ids = f"{offer.ids[0]}..{offer.ids[-1]} ({len(offer.ids)})"
        else:
            ids = ",".join(offer.ids)
        paths = ",".join(
            node.container_path
            if node.container_path == node.host_path
            else f"{node.container_path}={node.host_path}"
            for node in offer.nodes
        )
        envs = ",".join(f"{key}={value}" for key, value in sorted(offer.envs.items()))
        rows.append((offer.resource, ids, paths or "-", envs or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        + "\n"
        for row in rows
    )


def _without_tls() -> None:
    """Keep Python's `ssl` (OpenSSL, ~4.5 MB resident) out: asyncio imports it only if present,
    and the daemon speaks over unix sockets only (grpc carries its own TLS library anyway)."""
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]


async def _serve(
    host: HostRoot, rules_file: Path, plugin_dir: Path, rules: list[Rule], view: PathView
) -> int:
    import asyncio

    from device_plugin.daemon import Daemon

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    daemon = Daemon(host, rules_file, rules, plugin_dir, view)
    await daemon.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
