"""Entry point of `smarter-sim`."""

from __future__ import annotations

import argparse
import sys

from smarter_common.cli import add_common_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smarter-sim",
        description="a simulated gateway: remoteproc over FUSE, cores running firmware in QEMU.",
    )
    add_common_arguments(parser)
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
