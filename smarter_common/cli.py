"""Command-line options every long-running program shares: host root, logging, version."""

from __future__ import annotations

import argparse

from smarter_common import __version__
from smarter_common.hostroot import HOST_ROOT_ENV, HostRoot


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--version`, `--host-root`, `--log-level` and `--log-format` to `parser`."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--host-root",
        metavar="DIR",
        help=f"directory that stands for the host's / (env {HOST_ROOT_ENV}; default /)",
    )
    parser.add_argument(
        "--log-level", metavar="LEVEL", help="debug, info, warning or error (env SMARTER_LOG_LEVEL)"
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        help="json, console, or auto: json unless stderr is a terminal (env SMARTER_LOG_FORMAT)",
    )


def host_root_from(args: argparse.Namespace) -> HostRoot:
    return HostRoot.from_env(getattr(args, "host_root", None))
