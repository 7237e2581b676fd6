"""Entry point of `smarter-cni`.

With no arguments it is the CNI plugin, as a container runtime execs it (the fast path: only
the standard library). With a subcommand it is an operator's tool: `agent`, `dns`, `install`.
"""

from __future__ import annotations

import sys

# Not `from typing import TYPE_CHECKING`: importing typing costs every exec ~2.5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from smarter_common.hostroot import HostRoot


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if not arguments:
        from cni.plugin import run

        return run()
    if arguments[0] == "install":
        from cni.install import main as install

        return install(arguments[1:])
    return _operator(arguments)


def _parser() -> argparse.ArgumentParser:
    import argparse

    from smarter_common.cli import add_common_arguments

    parser = argparse.ArgumentParser(
        prog="smarter-cni",
        description=(
            "CNI plugin: pods on a node-local bridge, pod names in the node's DNS."
            " Run with no arguments (and CNI_COMMAND set) it is the plugin."
        ),
    )
    add_common_arguments(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    agent = commands.add_parser(
        "agent", help="serve the plugin's requests over a unix socket (the fast path)"
    )
    agent.add_argument(
        "--conf", required=True, help="the node's conflist, e.g. 10-smarter.conflist"
    )
    agent.add_argument("--socket", help="socket path (default: <stateDir>/agent.sock)")
    dns = commands.add_parser("dns", help="run dnsmasq in the foreground for the pod records")
    dns.add_argument("--conf", required=True, help="the node's conflist")
    dns.add_argument("--print", action="store_true", help="print dnsmasq's command line and exit")
    dns.add_argument("--dnsmasq", default=None, help="dnsmasq binary (default /usr/sbin/dnsmasq)")
    commands.add_parser(
        "install", help="copy the plugin and conflist into the node's CNI dirs (see install -h)"
    )
    return parser


def _operator(arguments: list[str]) -> int:
    from smarter_common import entry

    parser = _parser()
    return entry.run("smarter-cni", parser, lambda args: _operate(parser, args), arguments)


def _operate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """`agent` or `dns`; errors are the entry's to say (smarter_common.entry)."""
    from pathlib import Path

    from smarter_common.cli import host_root_from

    if args.command is None:
        parser.print_help()
        return 2
    root = host_root_from(args)
    if args.command == "agent":
        from cni.agent import serve

        return serve(Path(args.conf), Path(args.socket) if args.socket else None, root)
    return _dns(Path(args.conf), args.print, args.dnsmasq, root)


def _dns(conf_path: Path, print_only: bool, binary: str | None, root: HostRoot) -> int:
    import shlex

    from cni import config, dnsmasq
    from smarter_common.errors import SmarterError

    conf = config.parse(config.load_conflist(conf_path))
    command = dnsmasq.argv(conf, binary=binary or dnsmasq.DNSMASQ, host_root=root)
    if print_only:
        print(shlex.join(command))
        return 0
    # dnsmasq watches the directory; it must exist before the first pod is added.
    hosts = root.path(conf.dns.hosts_dir)
    hosts.mkdir(parents=True, exist_ok=True)
    blocked = dnsmasq.unreadable_for_dnsmasq(hosts)
    if blocked is not None:
        # Started anyway, dnsmasq would log `bad dynamic directory` and answer no pod name.
        raise SmarterError(
            f"dnsmasq runs as user {dnsmasq.DNSMASQ_USER}, which cannot read the hosts"
            f" directory {hosts}: it cannot enter or read {blocked}",
            hint=f"let others enter it (chmod o+rx {blocked}), or move stateDir or"
            " dns.hostsDir to a directory they can enter",
        )
    dnsmasq.exec_dnsmasq(command)
    return 1


if __name__ == "__main__":
    sys.exit(main())
