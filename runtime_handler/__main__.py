"""Entry point of `smarter-hybrid-runtime`."""

from __future__ import annotations

import argparse
import sys

from smarter_common.cli import add_common_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smarter-hybrid-runtime",
        description="OCI runtime for RuntimeClass hybrid: firmware on remote cores, rest to runc",
    )
    add_common_arguments(parser)
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
