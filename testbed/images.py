"""The images a simulated gateway runs: the node images (pause, busybox) and firmware for its core.

The node images are `smarter-sim build-node-images`'s; firmware images are packed as
`smarter-sim pack-firmware` packs them, under the names the examples in deploy/examples use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sim.node_images import BUSYBOX_IMAGE, PAUSE_IMAGE, NodeImageError, build_node_images

__all__ = [
    "BUSYBOX_IMAGE",
    "PAUSE_IMAGE",
    "ImageBuildError",
    "Images",
    "build_images",
    "firmware_image",
]

ImageBuildError = NodeImageError


@dataclass(frozen=True)
class Images:
    """Built image tarballs and the references they carry."""

    tarballs: tuple[Path, ...]
    firmware: dict[str, str]  # firmware name -> image reference


def firmware_image(name: str) -> str:
    """The reference of the example firmware `name` (deploy/examples/firmware-pod.yaml's)."""
    return f"localhost/firmware/{name}:1"


def build_images(out_dir: Path, *, core: str, firmware: tuple[str, ...]) -> Images:
    """Pack pause, busybox and one image per firmware (built for `core`) into `out_dir`."""
    from sim.firmware_build import build_firmware
    from sim.oci_image import pack_firmware_image

    tarballs = [image.tarball for image in build_node_images(out_dir)]
    references: dict[str, str] = {}
    for name in firmware:
        elf = build_firmware(name, core, out_dir / "firmware")
        reference = firmware_image(name)
        tarballs.append(
            pack_firmware_image(elf, out_dir / f"firmware-{name}.tar", reference, mcu=core)
        )
        references[name] = reference
    return Images(tuple(tarballs), references)
