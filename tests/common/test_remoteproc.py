import errno
from pathlib import Path

import pytest

from smarter_common.errors import HostPathError
from smarter_common.hostroot import HostRoot
from smarter_common.remoteproc import (
    Board,
    CoreSnapshot,
    console_device,
    core_by_id,
    cpu_from_descriptions,
    devicetree_strings,
    discover_cores,
    encode_devicetree_strings,
    firmware_dir,
    firmware_search_dirs,
    read_board,
    read_state,
    snapshot_cores,
)
from smarter_common.remoteproc_control import (
    REFUSALS,
    RemoteCoreError,
    meaning_of,
    write_attribute,
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


def test_snapshot_reports_every_core_and_says_what_it_could_not_read(tmp_path: Path) -> None:
    _core(tmp_path, 1, "cortex-m3", state="running")
    _core(tmp_path, 0, "cortex-m4")
    (tmp_path / "sys/class/remoteproc/remoteproc0/state").unlink()
    (tmp_path / "sys/class/remoteproc/remoteproc0/state").mkdir()
    snapshot = snapshot_cores(HostRoot(tmp_path))
    assert [s.device_id for s in snapshot] == ["remoteproc0", "remoteproc1"]
    assert snapshot[0].state.startswith("unreadable: ")
    assert snapshot[1] == CoreSnapshot("remoteproc1", "cortex-m3", "running", "rproc-fw")


def test_an_unreadable_state_reads_as_empty(tmp_path: Path) -> None:
    _core(tmp_path, 0, "cortex-m4")
    (core,) = discover_cores(HostRoot(tmp_path))
    (core.sysfs / "state").unlink()
    assert read_state(core) == ""


def test_devicetree_strings_round_trip() -> None:
    assert encode_devicetree_strings(("st,stm32mp157c-dk2", "st,stm32mp157")) == (
        b"st,stm32mp157c-dk2\0st,stm32mp157\0"
    )
    assert devicetree_strings(b"a,b\0\0c\0") == ("a,b", "c")


def test_board_reads_the_devicetree_model_and_compatible(tmp_path: Path) -> None:
    base = tmp_path / "sys/firmware/devicetree/base"
    assert read_board(HostRoot(tmp_path)) == Board(model="", compatible=())
    base.mkdir(parents=True)
    (base / "model").write_bytes(b"STM32MP157C-DK2\0")
    (base / "compatible").write_bytes(b"st,stm32mp157c-dk2\0st,stm32mp157\0")
    assert read_board(HostRoot(tmp_path)) == Board(
        "STM32MP157C-DK2", ("st,stm32mp157c-dk2", "st,stm32mp157")
    )


def _search_path(root: Path, value: str) -> None:
    param = root / "sys/module/firmware_class/parameters/path"
    param.parent.mkdir(parents=True, exist_ok=True)
    param.write_text(value + "\n")


def test_firmware_goes_to_the_loaders_custom_path_else_lib_firmware(tmp_path: Path) -> None:
    host = HostRoot(tmp_path)
    assert firmware_dir(host) == tmp_path / "lib/firmware"
    assert firmware_search_dirs(host) == [
        tmp_path / "lib/firmware/updates",
        tmp_path / "lib/firmware",
    ]
    _search_path(tmp_path, "/opt/fw")
    assert firmware_dir(host) == tmp_path / "opt/fw"
    assert firmware_search_dirs(host)[0] == tmp_path / "opt/fw"


def test_an_unusable_search_path_is_refused_for_placing_and_skipped_for_loading(
    tmp_path: Path,
) -> None:
    host = HostRoot(tmp_path)
    _search_path(tmp_path, "/../outside")
    with pytest.raises(HostPathError) as raised:
        firmware_dir(host)
    assert str(raised.value).startswith(
        "the kernel's firmware search path '/../outside' is unusable"
    )
    assert raised.value.hint == (
        "set /sys/module/firmware_class/parameters/path to an absolute directory"
    )
    assert firmware_search_dirs(host) == [
        tmp_path / "lib/firmware/updates",
        tmp_path / "lib/firmware",
    ]


def test_each_kernel_refusal_has_one_meaning() -> None:
    keys = [(refusal.attribute, refusal.errno) for refusal in REFUSALS]
    assert len(keys) == len(set(keys))
    assert meaning_of("state", errno.ENOENT, firmware="fw.elf") == (
        "the firmware loader found no file 'fw.elf'"
    )
    assert meaning_of("state", errno.EIO, firmware="fw.elf") is None


def test_a_refused_write_says_what_the_kernel_meant(tmp_path: Path) -> None:
    _core(tmp_path, 0, "cortex-m4")
    (core,) = discover_cores(HostRoot(tmp_path))
    # ENOENT has no meaning of its own for `recovery`: the errno's text is said.
    (core.sysfs / "recovery").unlink(missing_ok=True)
    with pytest.raises(RemoteCoreError) as raised:
        write_attribute(core, "recovery", "disabled")
    assert str(raised.value) == (
        "writing 'disabled' to remoteproc0/recovery failed: No such file or directory"
    )
