"""Entry point of `smarter-device-manager`."""

from __future__ import annotations

import argparse
import sys

from smarter_common.cli import add_common_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smarter-device-manager",
        description="kubelet device plugin: /dev devices and remote cores as extended resources.",
    )
    add_common_arguments(parser)
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
