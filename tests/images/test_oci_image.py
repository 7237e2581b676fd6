"""OCI image tarballs: their layout, and a real containerd importing and running them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.oci_image import ImageError, pack_firmware_image, pack_image

pytestmark = [pytest.mark.containerd]

BUSYBOX = Path("/bin/busybox")


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as archive:
        return {
            member.name: archive.extractfile(member).read()  # type: ignore[union-attr]
            for member in archive.getmembers()
            if member.isfile()
        }


def _manifest_and_config(members: dict[str, bytes]) -> tuple[dict, dict]:  # type: ignore[type-arg]
    index = json.loads(members["index.json"])
    digest = index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads(members[f"blobs/sha256/{digest}"])
    config_digest = manifest["config"]["digest"].removeprefix("sha256:")
    return manifest, json.loads(members[f"blobs/sha256/{config_digest}"])


def test_firmware_image_has_elf_entrypoint_and_labels(tmp_path: Path) -> None:
    elf = tmp_path / "blinky.elf"
    elf.write_bytes(b"\x7fELF" + b"\0" * 60)
    out = pack_firmware_image(
        elf, tmp_path / "fw.tar", "localhost/blinky:1", mcu="cortex-m4", board="stm32mp157c-dk2"
    )
    members = _members(out)
    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(members["index.json"])
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == "localhost/blinky:1"
    manifest, config = _manifest_and_config(members)
    assert config["config"]["Entrypoint"] == ["/firmware.elf"]
    assert config["config"]["Labels"] == {"mcu": "cortex-m4", "board": "stm32mp157c-dk2"}
    layer_digest = manifest["layers"][0]["digest"].removeprefix("sha256:")
    layer = members[f"blobs/sha256/{layer_digest}"]
    assert config["rootfs"]["diff_ids"] == [f"sha256:{layer_digest}"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
        firmware = archive.getmember("firmware.elf")
        assert firmware.mode == 0o755
        assert archive.extractfile(firmware).read() == elf.read_bytes()  # type: ignore[union-attr]


def test_every_blob_matches_its_digest(tmp_path: Path) -> None:
    out = pack_image(
        tmp_path / "img.tar",
        "localhost/tools:1",
        {"/etc/motd": b"hi\n", "/bin/tool": BUSYBOX},
        entrypoint=["/bin/tool"],
        symlinks={"/bin/sh": "tool"},
    )
    for name, data in _members(out).items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]


def test_same_inputs_give_the_same_tarball(tmp_path: Path) -> None:
    first = pack_image(tmp_path / "a.tar", "localhost/x:1", {"/a": b"1"}, entrypoint=["/a"])
    second = pack_image(tmp_path / "b.tar", "localhost/x:1", {"/a": b"1"}, entrypoint=["/a"])
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("reference", ["busybox", "busybox:1", "library/busybox:1", "localhost/x"])
def test_short_reference_is_refused(tmp_path: Path, reference: str) -> None:
    with pytest.raises(ImageError, match="not fully qualified"):
        pack_image(tmp_path / "x.tar", reference, {"/a": b""}, entrypoint=["/a"])
    assert not (tmp_path / "x.tar").exists()


def test_path_escaping_the_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="must be absolute and stay inside the image"):
        pack_image(tmp_path / "x.tar", "localhost/x:1", {"/../etc/a": b""}, entrypoint=["/a"])
    assert not (tmp_path / "x.tar").exists()


def test_missing_firmware_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        pack_firmware_image(tmp_path / "none.elf", tmp_path / "x.tar", "localhost/x:1", mcu="m4")


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Path]:
    """A throwaway containerd (no CRI) with everything under tmp_path; its socket."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.fail("containerd is missing: run scripts/setup.sh")
    base = Path(f"/run/se-ctr-{os.getpid()}")
    socket = base / "containerd.sock"
    config = tmp_path / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{tmp_path / "root"}"\n'
        f'state = "{base / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
    )
    log = (tmp_path / "containerd.log").open("w")
    process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while not socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                log_text = (tmp_path / "containerd.log").read_text()
                pytest.fail(f"containerd did not start: {log_text}")
            time.sleep(0.05)
        yield socket
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        subprocess.run(["umount", "-R", str(tmp_path / "root")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_containerd_imports_and_runs_a_packed_image(tmp_path: Path, containerd: Path) -> None:
    image = pack_image(
        tmp_path / "busybox.tar",
        "localhost/busybox:1",
        {"/bin/busybox": BUSYBOX},
        entrypoint=["/bin/busybox"],
        cmd=["echo", "packed image runs"],
        symlinks={"/bin/sh": "busybox"},
    )
    ctr = ["ctr", "--address", str(containerd), "--namespace", "se-test"]
    subprocess.run([*ctr, "images", "import", str(image)], check=True, capture_output=True)
    listed = subprocess.run(
        [*ctr, "images", "ls", "-q"], check=True, capture_output=True, text=True
    )
    assert "localhost/busybox:1" in listed.stdout.split()
    ran = subprocess.run(
        [*ctr, "run", "--rm", "localhost/busybox:1", f"se-{os.getpid()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "packed image runs"
