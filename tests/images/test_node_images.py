"""`smarter-sim build-node-images`: the pause and busybox images a simulated node runs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from sim.node_images import APPLETS, BUSYBOX_IMAGE, PAUSE_IMAGE, is_dynamic_elf

REPO = Path(__file__).resolve().parents[2]


def _image(tar_path: Path) -> tuple[str, dict, tarfile.TarFile]:  # type: ignore[type-arg]
    """The reference, the image config and the one layer of an OCI tarball."""
    with tarfile.open(tar_path) as archive:
        blobs = {
            m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in archive.getmembers()
            if m.isfile()
        }
    (entry,) = json.loads(blobs["index.json"])["manifests"]
    manifest = json.loads(blobs["blobs/sha256/" + entry["digest"].removeprefix("sha256:")])
    config = json.loads(blobs["blobs/sha256/" + manifest["config"]["digest"][7:]])
    layer = blobs["blobs/sha256/" + manifest["layers"][0]["digest"][7:]]
    reference = entry["annotations"]["io.containerd.image.name"]
    return reference, config, tarfile.open(fileobj=io.BytesIO(layer))


def _smarter_sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


def test_build_node_images_prints_the_pause_and_busybox_tarballs(tmp_path: Path) -> None:
    result = _smarter_sim("build-node-images", "--out", str(tmp_path / "images"))
    assert result.returncode == 0, result.stderr
    printed = [Path(line) for line in result.stdout.splitlines()]
    assert printed == [tmp_path / "images" / "pause.tar", tmp_path / "images" / "busybox.tar"]
    pause_ref, pause_config, pause_layer = _image(printed[0])
    assert pause_ref == PAUSE_IMAGE
    assert pause_config["config"]["Entrypoint"][:2] == ["/bin/busybox", "sleep"]
    assert pause_layer.getnames() == ["bin", "bin/busybox"]
    busybox_ref, busybox_config, busybox_layer = _image(printed[1])
    assert busybox_ref == BUSYBOX_IMAGE
    assert busybox_config["config"]["Entrypoint"] == ["/bin/sh"]
    for applet in APPLETS:
        assert busybox_layer.getmember(f"bin/{applet}").linkname == "busybox"


def test_a_dynamically_linked_busybox_is_refused_naming_the_package(tmp_path: Path) -> None:
    result = _smarter_sim(
        "build-node-images", "--out", str(tmp_path / "images"), "--busybox", "/bin/ls"
    )
    assert result.returncode == 1
    assert "/bin/ls is dynamically linked" in result.stderr
    assert "busybox-static" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "images").exists()


def test_only_an_elf_without_an_interpreter_counts_as_static() -> None:
    assert not is_dynamic_elf(Path("/bin/busybox").read_bytes())
    assert is_dynamic_elf(Path("/bin/ls").read_bytes())
    assert is_dynamic_elf(b"#!/bin/sh\necho not an ELF\n")
    assert is_dynamic_elf(b"\x7fELF")
