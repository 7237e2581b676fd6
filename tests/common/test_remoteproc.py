from pathlib import Path

import pytest

from smarter_common.hostroot import HostRoot
from smarter_common.remoteproc import (
    console_device,
    core_by_id,
    cpu_from_descriptions,
    discover_cores,
)


def _core(root: Path, index: int, name: str, state: str = "offline", compatible: str = "") -> None:
    sysfs = root / "sys/class/remoteproc" / f"remoteproc{index}"
    sysfs.mkdir(parents=True)
    (sysfs / "name").write_text(name + "\n")
    (sysfs / "state").write_text(state + "\n")
    (sysfs / "firmware").write_text("rproc-fw\n")
    if compatible:
        (sysfs / "device/of_node").mkdir(parents=True)
        (sysfs / "device/of_node/compatible").write_bytes(compatible.encode() + b"\0")


def test_discover_cores_in_index_order(tmp_path: Path) -> None:
    _core(tmp_path, 10, "m7")
    _core(tmp_path, 2, "m4", state="running")
    (tmp_path / "sys/class/remoteproc/not-a-core").mkdir()
    cores = discover_cores(HostRoot(tmp_path))
    assert [c.device_id for c in cores] == ["remoteproc2", "remoteproc10"]
    assert cores[0].resource_suffix == "rproc2"
    assert cores[0].state() == "running"
    assert cores[0].firmware() == "rproc-fw"


def test_no_remoteproc_class_means_no_cores(tmp_path: Path) -> None:
    assert discover_cores(HostRoot(tmp_path)) == []


@pytest.mark.parametrize(
    ("descriptions", "cpu"),
    [
        (["cortex-m4"], "cortex-m4"),
        (["imx-rproc", "fsl,imx8mq-cm4"], "cortex-m4"),
        (["m4", "st,stm32mp1-m4"], "cortex-m4"),
        (["r5f", "ti,am64-r5f"], "cortex-r5"),
        (["arm,cortex-m33"], "cortex-m33"),
        (["dsp", "fsl,imx8qxp-hifi4"], None),
    ],
)
def test_cpu_from_descriptions(descriptions: list[str], cpu: str | None) -> None:
    assert cpu_from_descriptions(descriptions) == cpu


def test_core_cpu_reads_devicetree_compatible(tmp_path: Path) -> None:
    _core(tmp_path, 0, "imx-rproc", compatible="fsl,imx8mm-cm4")
    (core,) = discover_cores(HostRoot(tmp_path))
    assert core.compatible == ["fsl,imx8mm-cm4"]
    assert core.cpu == "cortex-m4"


def test_core_by_id_and_console(tmp_path: Path) -> None:
    _core(tmp_path, 1, "cortex-m7")
    host = HostRoot(tmp_path)
    core = core_by_id(host, "remoteproc1")
    assert core is not None and core.index == 1
    assert core_by_id(host, "remoteproc9") is None
    assert core_by_id(host, "../etc") is None
    assert console_device(host, core) is None
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/ttyRPMSG1").touch()
    assert console_device(host, core) == tmp_path / "dev/ttyRPMSG1"
