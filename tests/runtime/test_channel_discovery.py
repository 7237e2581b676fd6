"""A core's RPMsg channels read from sysfs, as a board's kernel lays them out: the first tty
channel is the console, every further one and every rpmsg_char endpoint a data channel."""

from __future__ import annotations

import os
from pathlib import Path

from smarter_common.hostroot import HostRoot
from smarter_common.remoteproc import (
    CHANNEL_CHAR,
    CHANNEL_TTY,
    RemoteCore,
    console_device,
    core_by_id,
    core_channels,
)


def _board(root: Path, cores: int) -> HostRoot:
    """Cores laid out as on an i.MX8M Plus: the class entries link into /sys/devices."""
    for index in range(cores):
        device = root / f"sys/devices/platform/imx-rproc/remoteproc/remoteproc{index}"
        device.mkdir(parents=True)
        (device / "state").write_text("running\n")
        classes = root / "sys/class/remoteproc"
        classes.mkdir(parents=True, exist_ok=True)
        os.symlink(device, classes / f"remoteproc{index}")
    (root / "dev").mkdir(exist_ok=True)
    return HostRoot(root)


def _announce(host: HostRoot, core: int, device: str, channel: str, vdev: int = 0) -> None:
    """What the kernel makes when firmware on `core` announces `channel` (`ttyRPMSG3`,
    `rpmsg0`): the rpmsg device under the core, the class entry's `device` link, the node."""
    rproc = host.root / f"sys/devices/platform/imx-rproc/remoteproc/remoteproc{core}"
    rpmsg = rproc / f"remoteproc{core}#vdev{vdev}buffer/virtio{vdev}" / device
    rpmsg.mkdir(parents=True, exist_ok=True)
    class_name = "tty" if channel.startswith("ttyRPMSG") else "rpmsg"
    entry = host.root / "sys/class" / class_name / channel
    entry.mkdir(parents=True)
    os.symlink(rpmsg, entry / "device")
    (host.dev / channel).touch()


def _core(host: HostRoot, index: int) -> RemoteCore:
    core = core_by_id(host, f"remoteproc{index}")
    assert core is not None
    return core


def test_the_first_tty_channel_is_the_console_and_the_rest_are_data(tmp_path: Path) -> None:
    host = _board(tmp_path, 1)
    _announce(host, 0, "virtio0.rpmsg-tty.-1.1024", "ttyRPMSG0")
    _announce(host, 0, "virtio0.rpmsg-tty.-1.1025", "ttyRPMSG1")
    _announce(host, 0, "virtio0.rpmsg-tty.-1.1026", "ttyRPMSG2")
    channels = core_channels(host, _core(host, 0))
    assert channels.console is not None
    assert channels.console.node == host.dev / "ttyRPMSG0"
    assert [c.device_name for c in channels.data] == ["ttyRPMSG1", "ttyRPMSG2"]
    assert {c.kind for c in channels.data} == {CHANNEL_TTY}
    assert channels.data[0].endpoint == "virtio0.rpmsg-tty.-1.1025"


def test_channels_are_in_announcement_order_past_nine(tmp_path: Path) -> None:
    host = _board(tmp_path, 1)
    for number in (10, 2, 9):
        _announce(host, 0, f"virtio0.rpmsg-tty.-1.{1024 + number}", f"ttyRPMSG{number}")
    channels = core_channels(host, _core(host, 0))
    assert channels.console is not None and channels.console.number == 2
    assert [c.number for c in channels.data] == [9, 10]


def test_rpmsg_char_endpoints_are_data_channels_and_ctrl_devices_are_not(tmp_path: Path) -> None:
    host = _board(tmp_path, 1)
    _announce(host, 0, "virtio0.rpmsg-tty.-1.1024", "ttyRPMSG0")
    _announce(host, 0, "virtio0.rpmsg_ctrl.0.0", "rpmsg_ctrl0")
    _announce(host, 0, "virtio0.rpmsg-raw.-1.1030", "rpmsg0")
    channels = core_channels(host, _core(host, 0))
    assert [(c.kind, c.device_name) for c in channels.data] == [(CHANNEL_CHAR, "rpmsg0")]


def test_each_core_has_only_the_channels_sysfs_places_under_it(tmp_path: Path) -> None:
    host = _board(tmp_path, 2)
    _announce(host, 0, "virtio0.rpmsg-tty.-1.1024", "ttyRPMSG0")
    _announce(host, 1, "virtio0.rpmsg-tty.-1.1024", "ttyRPMSG1")
    _announce(host, 0, "virtio0.rpmsg-tty.-1.1025", "ttyRPMSG2")
    _announce(host, 1, "virtio0.rpmsg-tty.-1.1025", "ttyRPMSG3")
    first, second = core_channels(host, _core(host, 0)), core_channels(host, _core(host, 1))
    assert [c.device_name for c in first.data] == ["ttyRPMSG2"]
    assert [c.device_name for c in second.data] == ["ttyRPMSG3"]
    assert second.console is not None and second.console.device_name == "ttyRPMSG1"


def test_a_channel_without_its_device_node_is_not_there_yet(tmp_path: Path) -> None:
    host = _board(tmp_path, 1)
    _announce(host, 0, "virtio0.rpmsg-tty.-1.1024", "ttyRPMSG0")
    _announce(host, 0, "virtio0.rpmsg-tty.-1.1025", "ttyRPMSG1")
    (host.dev / "ttyRPMSG1").unlink()
    assert core_channels(host, _core(host, 0)).data == ()


def test_the_console_guess_never_takes_another_cores_data_channel(tmp_path: Path) -> None:
    # remoteproc1 has announced nothing yet; ttyRPMSG1 is remoteproc0's data channel.
    host = _board(tmp_path, 2)
    _announce(host, 0, "virtio0.rpmsg-tty.-1.1024", "ttyRPMSG0")
    _announce(host, 0, "virtio0.rpmsg-tty.-1.1025", "ttyRPMSG1")
    assert console_device(host, _core(host, 1)) is None
    assert console_device(host, _core(host, 0)) == host.dev / "ttyRPMSG0"


def test_the_console_guess_stands_where_sysfs_says_nothing(tmp_path: Path) -> None:
    host = _board(tmp_path, 2)
    (host.dev / "ttyRPMSG1").touch()
    assert console_device(host, _core(host, 1)) == host.dev / "ttyRPMSG1"
    assert core_channels(host, _core(host, 1)).data == ()


def test_the_console_is_the_first_endpoint_even_on_a_higher_tty_number(tmp_path: Path) -> None:
    # After a restart the kernel may give the data channel a lower number than the console.
    host = _board(tmp_path, 1)
    _announce(host, 0, "virtio0.rpmsg-tty.-1.1025", "ttyRPMSG0")
    _announce(host, 0, "virtio0.rpmsg-tty.-1.1024", "ttyRPMSG1")
    channels = core_channels(host, _core(host, 0))
    assert channels.console is not None and channels.console.device_name == "ttyRPMSG1"
    assert [c.device_name for c in channels.data] == ["ttyRPMSG0"]
