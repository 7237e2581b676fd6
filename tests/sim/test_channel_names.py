"""The names and attributes the simulator gives rpmsg channels, and spotting the announce marker."""

from __future__ import annotations

from pathlib import Path

from sim.channels import (
    ANNOUNCE,
    CONSOLE_ADDRESS,
    DATA_ADDRESS,
    DataChannel,
    RpmsgDevice,
    TtyPublisher,
    find_announce,
)
from sim.firmware_build import SDK_DIR
from smarter_common.hostroot import HostRoot


def test_channels_are_named_as_the_kernel_names_announced_ones() -> None:
    console = RpmsgDevice(2, CONSOLE_ADDRESS)
    data = RpmsgDevice(2, DATA_ADDRESS)

    assert console.name == "virtio2.rpmsg-tty.-1.1024"
    assert data.parts == ("remoteproc2#vdev0buffer", "virtio2", "virtio2.rpmsg-tty.-1.1025")
    assert data.attribute("name") == b"rpmsg-tty\n"
    assert data.attribute("dst") == b"0x401\n"
    assert data.attribute("driver_override") is None


def test_links_resolve_from_where_they_are_placed() -> None:
    data = RpmsgDevice(0, DATA_ADDRESS)
    tail = "remoteproc0/remoteproc0#vdev0buffer/virtio0/virtio0.rpmsg-tty.-1.1025"

    assert data.class_link() == f"../../remoteproc/{tail}"  # from sys/class/tty/ttyRPMSGk
    assert data.bus_link() == f"../../../class/remoteproc/{tail}"  # from sys/bus/rpmsg/devices


def test_the_announce_marker_is_found_across_what_came_before_it() -> None:
    assert find_announce(b"boot noise" + ANNOUNCE + b"first") == len(b"boot noise") + len(ANNOUNCE)
    assert find_announce(ANNOUNCE[:-1]) == -1
    assert find_announce(b"") == -1


def test_the_marker_is_the_one_the_sdk_writes() -> None:
    header = (SDK_DIR / "src" / "sim.h").read_text()
    written = '"' + ANNOUNCE.decode().replace("\x1b", "\\x1b").replace("\n", "\\n") + '"'
    assert f"#define SIM_CHANNEL_ANNOUNCE {written}" in header


def test_qemu_is_given_the_fifos_with_commas_escaped_and_close_removes_them(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "gw,1" / "cores" / "0"
    publisher = TtyPublisher(HostRoot(tmp_path), first_index=1)
    channel = DataChannel(RpmsgDevice(0, DATA_ADDRESS), publisher, core_id="t", directory=directory)
    try:
        assert sorted(path.name for path in directory.iterdir()) == ["uart1.in", "uart1.out"]
        assert channel.qemu_arguments() == [
            "-chardev",
            f"pipe,id=uart1,path={tmp_path}/gw,,1/cores/0/uart1",
            "-serial",
            "chardev:uart1",
        ]
    finally:
        channel.close()
    assert list(directory.iterdir()) == []
