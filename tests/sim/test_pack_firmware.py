"""`smarter-sim pack-firmware`: an example firmware as an importable OCI image tarball."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

from testbed.simulator import REPO
from tests.sim.conftest import firmware


def pack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim", "pack-firmware", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


def blob(archive: tarfile.TarFile, digest: str) -> bytes:
    member = archive.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
    assert member is not None
    return member.read()


def test_a_firmware_is_packed_with_its_entrypoint_and_labels(tmp_path: Path) -> None:
    elf = firmware("hello", "cortex-m4")
    out = tmp_path / "hello.tar"

    result = pack("--elf", str(elf), "--mcu", "cortex-m4", "--board", "stm32mp157c-dk2")
    assert result.returncode == 2  # --ref and --out are required
    result = pack(
        "--elf", str(elf), "--mcu", "cortex-m4", "--board", "stm32mp157c-dk2",
        "--ref", "localhost/hello-m4:1", "--out", str(out),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    with tarfile.open(out) as archive:
        index = json.loads(archive.extractfile("index.json").read())  # type: ignore[union-attr]
        descriptor = index["manifests"][0]
        assert descriptor["annotations"]["io.containerd.image.name"] == "localhost/hello-m4:1"
        manifest = json.loads(blob(archive, descriptor["digest"]))
        config = json.loads(blob(archive, manifest["config"]["digest"]))
        assert config["config"]["Entrypoint"] == ["/firmware.elf"]
        assert config["config"]["Labels"] == {"mcu": "cortex-m4", "board": "stm32mp157c-dk2"}
        layer = blob(archive, manifest["layers"][0]["digest"])
    (tmp_path / "layer.tar").write_bytes(layer)
    with tarfile.open(tmp_path / "layer.tar") as files:
        packed = files.extractfile("firmware.elf")
        assert packed is not None and packed.read() == elf.read_bytes()


def test_a_firmware_the_mcu_cannot_run_is_refused_and_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "wrong.tar"

    result = pack(
        "--elf", str(firmware("hello", "cortex-m33")), "--mcu", "cortex-m3",
        "--ref", "localhost/wrong:1", "--out", str(out),
    )  # fmt: skip

    assert result.returncode == 1
    assert "but the core is a cortex-m3" in result.stderr
    assert list(tmp_path.iterdir()) == []
