"""Allocate for a core hands its console at most, never a data channel: the runtime is the one
owner of data channels, and gives them only to the Linux containers of the firmware's pod."""

from __future__ import annotations

import os

from device_plugin.remoteproc_source import RemoteprocSource
from device_plugin.sources import DeviceNode
from smarter_common.hostroot import HostRoot
from tests.device_plugin.conftest import HostTree


def _announce(host: HostTree, core: int, endpoint: str, tty: str, minor: int) -> None:
    rpmsg = host.root / f"sys/class/remoteproc/remoteproc{core}/virtio0/{endpoint}"
    rpmsg.mkdir(parents=True)
    entry = host.root / "sys/class/tty" / tty
    entry.mkdir(parents=True)
    os.symlink(rpmsg, entry / "device")
    host.node(tty, 136, minor)


def test_a_core_with_data_channels_is_allocated_with_its_console_only(host: HostTree) -> None:
    host.core(0, "cortex-m4", "running")
    host.core(1, "cortex-m33")
    _announce(host, 0, "virtio0.rpmsg-tty.-1.1024", "ttyRPMSG0", 0)
    # remoteproc0's data channel holds the number remoteproc1's console would be guessed at.
    _announce(host, 0, "virtio0.rpmsg-tty.-1.1025", "ttyRPMSG1", 1)
    offers = RemoteprocSource(HostRoot(host.root)).scan()
    assert offers[0].nodes == (DeviceNode("/dev/ttyRPMSG0", "/dev/ttyRPMSG0"),)
    assert offers[1].nodes == ()
