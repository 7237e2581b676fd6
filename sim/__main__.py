"""Entry point of `smarter-sim`: `up`, `down`, `build-firmware`, `pack-firmware` and
`build-node-images`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim import boards
from sim.firmware_build import KINDS
from smarter_common import entry
from smarter_common.cli import add_common_arguments
from smarter_common.logs import get_logger

PROGRAM = "smarter-sim"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="a simulated gateway: remoteproc over FUSE, cores running firmware in QEMU.",
    )
    add_common_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="build a host root in DIR and serve it until stopped")
    up.add_argument("--root", required=True, type=Path, metavar="DIR", help="the host root")
    up.add_argument(
        "--core",
        dest="cores",
        action="append",
        required=True,
        choices=sorted(boards.CORE_TYPES),
        metavar="CPU",
        help=f"a remote core, once per core ({', '.join(boards.CORE_TYPES)})",
    )
    up.add_argument(
        "--board",
        choices=sorted(boards.BOARDS),
        metavar="NAME",
        help=f"the board the devicetree names ({', '.join(boards.BOARDS)};"
        f" default {boards.DEFAULT_BOARD})",
    )

    down = commands.add_parser("down", help="stop the simulator serving DIR")
    down.add_argument("--root", required=True, type=Path, metavar="DIR", help="the host root")
    down.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (30)")

    build = commands.add_parser("build-firmware", help="build an example firmware ELF")
    build.add_argument("--kind", required=True, choices=list(KINDS))
    build.add_argument("--cpu", required=True, choices=sorted(boards.CORE_TYPES))
    build.add_argument("--out", required=True, type=Path, metavar="DIR")
    build.add_argument(
        "--crash-after",
        type=int,
        default=3,
        metavar="N",
        help="crash, lockup: lines before the fault (3)",
    )

    pack = commands.add_parser(
        "pack-firmware", help="pack a firmware ELF into an OCI image tarball for ctr images import"
    )
    pack.add_argument("--elf", required=True, type=Path, help="the firmware ELF")
    pack.add_argument("--mcu", required=True, metavar="CPU", help="the core it is for: label mcu")
    pack.add_argument("--board", metavar="NAME", help="the board it is for: label board")
    pack.add_argument("--ref", required=True, help="image reference, e.g. localhost/hello:1")
    pack.add_argument("--out", required=True, type=Path, metavar="TAR", help="the tarball")

    node = commands.add_parser(
        "build-node-images",
        help="pack the pause and busybox images a simulated node's pods run (OCI tarballs)",
    )
    node.add_argument("--out", required=True, type=Path, metavar="DIR")
    node.add_argument(
        "--busybox",
        type=Path,
        default=Path("/bin/busybox"),
        metavar="FILE",
        help="a statically linked busybox (default /bin/busybox, Debian's busybox-static)",
    )
    return parser


def _pack_firmware(args: argparse.Namespace) -> Path:
    """Refuse an ELF that the `mcu` it is labelled for could not run, then pack it."""
    from sim.oci_image import pack_firmware_image
    from smarter_common.firmware_elf import check_fits, read_elf_facts

    check_fits(read_elf_facts(args.elf), args.mcu)
    return pack_firmware_image(args.elf, args.out, args.ref, mcu=args.mcu, board=args.board)


def main(argv: list[str] | None = None) -> int:
    return entry.run(PROGRAM, _parser(), _command, argv)


def _command(args: argparse.Namespace) -> None:
    if args.command == "up":
        from sim.server import serve

        serve(args.root, args.cores, args.board, sys.stdout)
    elif args.command == "down":
        from sim.server import down

        if not down(args.root, args.timeout):
            get_logger(PROGRAM).info("simulator_not_running", root=str(args.root))
    elif args.command == "pack-firmware":
        print(_pack_firmware(args))
    elif args.command == "build-node-images":
        from sim.node_images import build_node_images

        for image in build_node_images(args.out, busybox=args.busybox):
            print(image.tarball)
    else:
        from sim.firmware_build import build_firmware

        print(build_firmware(args.kind, args.cpu, args.out, crash_after=args.crash_after))


if __name__ == "__main__":
    sys.exit(main())
