"""OCI image-layout tarballs built from files, importable with `ctr images import`.

A firmware image is `FROM scratch`: one layer holding the ELF at `/firmware.elf`, the
entrypoint set to it, and labels naming the board and microcontroller it was built for. The same
packer builds the small Linux images (pause, busybox) a simulated gateway's pods run.
Output is deterministic: the same inputs give the same digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import stat
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from smarter_common.errors import SmarterError

FIRMWARE_PATH = "/firmware.elf"
LABEL_BOARD = "board"
LABEL_MCU = "mcu"

_MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
_MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
_ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
_ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class ImageError(SmarterError):
    """An image cannot be built from the given inputs."""


@dataclass(frozen=True)
class _Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


def host_architecture() -> str:
    """The host's architecture as OCI names it (`amd64`, `arm64`, `arm`)."""
    machine = platform.machine().lower()
    if machine.startswith("armv"):
        return "arm"
    return _GOARCH.get(machine, machine)


def pack_image(
    out_tar: Path,
    reference: str,
    files: Mapping[str, Path | bytes],
    *,
    entrypoint: Sequence[str],
    cmd: Sequence[str] | None = None,
    env: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    symlinks: Mapping[str, str] | None = None,
    modes: Mapping[str, int] | None = None,
    architecture: str | None = None,
) -> Path:
    """Write an OCI image layout tarball for `reference` (e.g. `localhost/busybox:1`).

    `files` maps absolute image paths to a host file (its permission bits are kept) or bytes
    (mode 0644 unless `modes` says otherwise); `symlinks` maps image paths to link targets.
    """
    _check_reference(reference)
    layer = _Blob(_MEDIA_LAYER, _layer_tar(files, symlinks or {}, modes or {}))
    config = _Blob(
        _MEDIA_CONFIG,
        _canonical_json(
            {
                "architecture": architecture or host_architecture(),
                "os": "linux",
                "config": {
                    "Entrypoint": list(entrypoint),
                    "Cmd": list(cmd or []),
                    "Env": list(
                        env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
                    ),
                    "Labels": dict(labels or {}),
                },
                "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
                "history": [{"created_by": "smarter-sim pack_image"}],
            }
        ),
    )
    manifest = _Blob(
        _MEDIA_MANIFEST,
        _canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": _MEDIA_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
            }
        ),
    )
    index = {
        "schemaVersion": 2,
        "manifests": [
            manifest.descriptor(
                annotations={
                    _ANNOTATION_CONTAINERD_NAME: reference,
                    _ANNOTATION_REF_NAME: reference.rsplit(":", 1)[-1],
                },
                platform={"architecture": architecture or host_architecture(), "os": "linux"},
            )
        ],
    }
    out_tar.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out_tar, "w", format=tarfile.PAX_FORMAT) as archive:
        _add_bytes(archive, "oci-layout", _canonical_json({"imageLayoutVersion": "1.0.0"}))
        _add_bytes(archive, "index.json", _canonical_json(index))
        for blob in (layer, config, manifest):
            _add_bytes(archive, f"blobs/sha256/{blob.digest.removeprefix('sha256:')}", blob.data)
    return out_tar


def pack_firmware_image(
    elf: Path, out_tar: Path, reference: str, *, mcu: str, board: str | None = None
) -> Path:
    """A `FROM scratch` image whose entrypoint is the firmware ELF at /firmware.elf."""
    if not elf.is_file():
        raise ImageError(f"firmware {elf} does not exist")
    labels = {LABEL_MCU: mcu}
    if board:
        labels[LABEL_BOARD] = board
    return pack_image(
        out_tar,
        reference,
        {FIRMWARE_PATH: elf},
        entrypoint=[FIRMWARE_PATH],
        labels=labels,
        env=[],
        modes={FIRMWARE_PATH: 0o755},
    )


def _check_reference(reference: str) -> None:
    name, separator, tag = reference.rpartition(":")
    registry = name.split("/", 1)[0] if "/" in name else ""
    qualified_registry = registry == "localhost" or "." in registry or ":" in registry
    if not (separator and tag and "/" not in tag and qualified_registry):
        raise ImageError(
            f"image reference {reference!r} is not fully qualified",
            hint="use registry/name:tag, e.g. localhost/blinky:1, so the CRI does not pull it",
        )


def _layer_tar(
    files: Mapping[str, Path | bytes], symlinks: Mapping[str, str], modes: Mapping[str, int]
) -> bytes:
    entries: dict[str, tarfile.TarInfo] = {}
    contents: dict[str, bytes] = {}
    for image_path, source in files.items():
        name = _member_name(image_path)
        data = source.read_bytes() if isinstance(source, Path) else source
        if image_path in modes:
            mode = modes[image_path]
        elif isinstance(source, Path):
            mode = stat.S_IMODE(source.stat().st_mode)
        else:
            mode = 0o644
        info = _info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        entries[name] = info
        contents[name] = data
    for image_path, target in symlinks.items():
        name = _member_name(image_path)
        info = _info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        entries[name] = info
    for name in list(entries):
        for parent in PurePosixPath(name).parents:
            if str(parent) not in (".", "") and str(parent) not in entries:
                entries[str(parent)] = _info(str(parent), tarfile.DIRTYPE, 0o755)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(entries):
            member = contents.get(name)
            archive.addfile(entries[name], io.BytesIO(member) if member is not None else None)
    return buffer.getvalue()


def _member_name(image_path: str) -> str:
    path = PurePosixPath(image_path)
    if not path.is_absolute() or ".." in path.parts or path == PurePosixPath("/"):
        raise ImageError(f"image path {image_path!r} must be absolute and stay inside the image")
    return str(path.relative_to("/"))


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _info(name, tarfile.REGTYPE, 0o644)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
