"""The Linux images a simulated node's pods need: a pause image and a busybox.

Both are one layer holding the host's static busybox (Debian's `busybox-static`), so a node
without a registry, such as the simulated gateway, can run ordinary pods and sandboxes. The
pause image is what containerd's `sandbox_image` names; busybox runs the examples' shells.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from sim.oci_image import pack_image
from smarter_common.errors import SmarterError

BUSYBOX = Path("/bin/busybox")
PAUSE_IMAGE = "localhost/pause:1"
BUSYBOX_IMAGE = "localhost/busybox:1"
# Applets the pods and examples use; each is a symlink to the static busybox.
APPLETS = (
    "sh",
    "sleep",
    "nslookup",
    "ping",
    "cat",
    "ls",
    "ip",
    "hostname",
    "wget",
    "echo",
    "stty",
)
# The CRI kills a sandbox with SIGKILL, so a plain long sleep is a complete pause.
PAUSE_ENTRYPOINT = ("/bin/busybox", "sleep", "2147483647")

_PT_INTERP = 3


class NodeImageError(SmarterError):
    """A node image cannot be built from this machine's busybox."""


@dataclass(frozen=True)
class NodeImage:
    """One built image: the reference it carries and its OCI tarball."""

    reference: str
    tarball: Path


def build_node_images(out_dir: Path, *, busybox: Path = BUSYBOX) -> tuple[NodeImage, NodeImage]:
    """Pack the pause and busybox images into `out_dir` (`pause.tar`, `busybox.tar`)."""
    _check_static(busybox)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"/bin/busybox": busybox}
    pause = pack_image(out_dir / "pause.tar", PAUSE_IMAGE, files, entrypoint=PAUSE_ENTRYPOINT)
    shell = pack_image(
        out_dir / "busybox.tar",
        BUSYBOX_IMAGE,
        files,
        entrypoint=["/bin/sh"],
        symlinks={f"/bin/{name}": "busybox" for name in APPLETS},
    )
    return NodeImage(PAUSE_IMAGE, pause), NodeImage(BUSYBOX_IMAGE, shell)


def _check_static(busybox: Path) -> None:
    """Refuse a busybox that needs a dynamic loader: the images hold no libc."""
    hint = "install Debian's busybox-static, or name a statically linked busybox with --busybox"
    try:
        head = busybox.read_bytes()
    except OSError as error:
        raise NodeImageError(f"cannot read {busybox}: {error.strerror}", hint=hint) from None
    if is_dynamic_elf(head):
        raise NodeImageError(f"{busybox} is dynamically linked", hint=hint)


def is_dynamic_elf(data: bytes) -> bool:
    """Whether `data` is an ELF executable naming a program interpreter (PT_INTERP).

    Anything that is not a readable ELF counts as dynamic: it could not run in an empty image.
    """
    if len(data) < 52 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return True
    wide = data[4] == 2
    order = "<" if data[5] == 1 else ">"
    if wide:
        (phoff,) = struct.unpack_from(order + "Q", data, 32)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 54)
    else:
        (phoff,) = struct.unpack_from(order + "I", data, 28)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 42)
    for index in range(phnum):
        offset = phoff + index * phentsize
        if offset + 4 > len(data):
            return True
        (kind,) = struct.unpack_from(order + "I", data, offset)
        if kind == _PT_INTERP:
            return True
    return False
