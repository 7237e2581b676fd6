"""The images a simulated gateway runs: pause, busybox, and firmware built for its core."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smarter_common.errors import SmarterError

BUSYBOX = Path("/bin/busybox")
PAUSE_IMAGE = "localhost/pause:1"
BUSYBOX_IMAGE = "localhost/busybox:1"
# Applets the pods use; each is a symlink to the static busybox.
APPLETS = ("sh", "sleep", "nslookup", "ping", "cat", "ls", "ip", "hostname", "wget", "echo")


class ImageBuildError(SmarterError):
    """An image could not be built on this machine."""


@dataclass(frozen=True)
class Images:
    """Built image tarballs and the references they carry."""

    tarballs: tuple[Path, ...]
    firmware: dict[str, str]  # firmware name -> image reference


def firmware_image(name: str) -> str:
    return f"localhost/firmware-{name}:1"


def build_images(out_dir: Path, *, core: str, firmware: tuple[str, ...]) -> Images:
    """Pack pause, busybox and one image per firmware (built for `core`) into `out_dir`."""
    from sim.oci_image import pack_firmware_image, pack_image

    if not BUSYBOX.is_file():
        raise ImageBuildError(f"{BUSYBOX} is missing", hint="apt-get install busybox-static")
    out_dir.mkdir(parents=True, exist_ok=True)
    applets = {f"/bin/{name}": "busybox" for name in APPLETS}
    pause = pack_image(
        out_dir / "pause.tar",
        PAUSE_IMAGE,
        {"/bin/busybox": BUSYBOX},
        # The CRI kills a sandbox with SIGKILL, so a plain long sleep is a complete pause.
        entrypoint=["/bin/busybox", "sleep", "2147483647"],
    )
    busybox = pack_image(
        out_dir / "busybox.tar",
        BUSYBOX_IMAGE,
        {"/bin/busybox": BUSYBOX},
        entrypoint=["/bin/sh"],
        symlinks=applets,
    )
    tarballs = [pause, busybox]
    references: dict[str, str] = {}
    if firmware:
        try:
            from sim.firmware_build import build_firmware
        except ImportError as error:
            raise ImageBuildError(
                "sim.firmware_build is not available", hint="the simulator package is incomplete"
            ) from error
        for name in firmware:
            elf = build_firmware(name, core, out_dir / "firmware")
            reference = firmware_image(name)
            tarballs.append(
                pack_firmware_image(elf, out_dir / f"firmware-{name}.tar", reference, mcu=core)
            )
            references[name] = reference
    return Images(tuple(tarballs), references)
