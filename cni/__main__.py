"""Entry point of `smarter-cni`."""

from __future__ import annotations

import argparse
import sys

from smarter_common.cli import add_common_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smarter-cni",
        description="CNI plugin: pods on a node-local bridge, pod names in the node's DNS.",
    )
    add_common_arguments(parser)
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
