"""The two device sources against a real tree: mknod device nodes, symlinks, sysfs files."""

from __future__ import annotations

import os

import pytest

from device_plugin.dev_source import PSEUDO_DIRS, DevSource, quiet_dirs, scan_dev
from device_plugin.remoteproc_source import RemoteprocSource
from device_plugin.rules import DevEntry, parse_rules
from device_plugin.sources import DeviceNode
from smarter_common.hostroot import HostRoot
from tests.device_plugin.conftest import REPO, SOUND_MAJOR, HostTree


@pytest.mark.root
def test_scan_lists_nodes_directories_and_resolves_links_inside_the_host_root(
    host: HostTree,
) -> None:
    host.node("ttyUSB0")
    host.node("snd/controlC0", SOUND_MAJOR, 0)
    (host.dev / "shm").mkdir()
    (host.dev / "shm/segment").write_text("x")
    (host.dev / "disk").mkdir()
    (host.dev / "disk/notes").write_text("x")
    (host.dev / "serial/by-id").mkdir(parents=True)
    os.symlink("../../ttyUSB0", host.dev / "serial/by-id/usb-FTDI-port0")
    os.symlink("/dev/ttyUSB0", host.dev / "absolute")  # the host's /, i.e. under the root
    os.symlink("/proc/self/fd", host.dev / "fd")
    os.symlink("../etc/passwd", host.dev / "escape")
    os.symlink("nowhere", host.dev / "dangling")
    entries = {entry.path: entry for entry in scan_dev(HostRoot(host.root))}
    assert entries["ttyUSB0"] == DevEntry("ttyUSB0", "char")
    assert entries["snd"] == DevEntry("snd", "dir")
    assert entries["snd/controlC0"] == DevEntry("snd/controlC0", "char")
    assert entries["disk/notes"] == DevEntry("disk/notes", "other")
    assert entries["shm"] == DevEntry("shm", "dir")
    assert "shm/segment" not in entries  # memory filesystems are not walked
    assert entries["serial/by-id/usb-FTDI-port0"].target == "ttyUSB0"
    assert entries["absolute"].target == "ttyUSB0"
    assert entries["fd"] == DevEntry("fd", "link", None)
    assert entries["escape"] == DevEntry("escape", "link", None)
    assert entries["dangling"] == DevEntry("dangling", "link", None)


@pytest.mark.root
def test_dev_offers_give_host_paths_as_the_host_sees_them(host: HostTree) -> None:
    host.node("ttyUSB0")
    (host.dev / "serial/by-id").mkdir(parents=True)
    os.symlink("../../ttyUSB0", host.dev / "serial/by-id/usb-FTDI-port0")
    rules = parse_rules(
        "- devicematch: ^ttyUSB0$\n  nummaxdevices: 2\n"
        "- devicematch: ^serial/by-id/\n  nummaxdevices: 1\n"
    )
    offers = {o.resource: o for o in DevSource(HostRoot(host.root), rules).scan()}
    assert offers["smarter-devices/ttyUSB0"].ids == ("ttyUSB0-0", "ttyUSB0-1")
    assert offers["smarter-devices/ttyUSB0"].nodes == (DeviceNode("/dev/ttyUSB0", "/dev/ttyUSB0"),)
    by_id = offers["smarter-devices/serial_by-id_usb-FTDI-port0"]
    assert by_id.nodes == (DeviceNode("/dev/serial/by-id/usb-FTDI-port0", "/dev/ttyUSB0", "rw"),)


@pytest.mark.root
def test_each_core_is_an_exclusive_resource_naming_itself_in_the_env(host: HostTree) -> None:
    host.core(0, "cortex-m4")
    host.core(1, "cortex-m33")
    host.node("ttyRPMSG1", 136, 4)
    offers = RemoteprocSource(HostRoot(host.root)).scan()
    assert [(o.resource, o.ids) for o in offers] == [
        ("smarter-devices/rproc0", ("remoteproc0",)),
        ("smarter-devices/rproc1", ("remoteproc1",)),
    ]
    assert offers[0].envs == {"SMARTER_RPROC": "remoteproc0", "SMARTER_RPROC_NAME": "cortex-m4"}
    assert offers[0].nodes == ()
    assert offers[1].nodes == (DeviceNode("/dev/ttyRPMSG1", "/dev/ttyRPMSG1"),)


def test_a_core_console_linked_outside_dev_is_left_out(host: HostTree) -> None:
    host.core(0, "cortex-m4")
    os.symlink("/proc/self/fd/0", host.dev / "ttyRPMSG0")
    (offer,) = RemoteprocSource(HostRoot(host.root)).scan()
    assert offer.nodes == ()
    assert offer.envs["SMARTER_RPROC"] == "remoteproc0"


def test_no_remoteproc_class_means_no_cores(host: HostTree) -> None:
    (host.root / "sys/class/remoteproc").rmdir()
    assert RemoteprocSource(HostRoot(host.root)).scan() == []


@pytest.mark.root
def test_local_view_hands_over_paths_as_this_machine_sees_them(host: HostTree) -> None:
    host.node("ttyUSB0")
    rules = parse_rules("- devicematch: ^ttyUSB0$\n  nummaxdevices: 1\n")
    (offer,) = DevSource(HostRoot(host.root), rules, "local").scan()
    assert offer.nodes == (DeviceNode("/dev/ttyUSB0", str(host.dev / "ttyUSB0")),)


def test_local_view_follows_a_console_linked_to_a_pty_of_this_machine(host: HostTree) -> None:
    host.core(0, "cortex-m4")
    master, slave = os.openpty()
    try:
        pty = os.ttyname(slave)
        os.symlink(pty, host.dev / "ttyRPMSG0")  # as the simulator makes it
        (local,) = RemoteprocSource(HostRoot(host.root), "local").scan()
        assert local.nodes == (DeviceNode("/dev/ttyRPMSG0", pty),)
        # Seen as a host's /, that link points at <root>/dev/pts/N, which is not there.
        (as_host,) = RemoteprocSource(HostRoot(host.root), "host").scan()
        assert as_host.nodes == ()
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.root
def test_pseudo_directories_are_walked_only_when_a_rule_names_them(host: HostTree) -> None:
    host.node("ttyUSB0")
    host.node("pts/0", 136, 0)
    (host.dev / "shm").mkdir()
    plain = parse_rules("- devicematch: ^ttyUSB0$\n  nummaxdevices: 1\n")
    assert quiet_dirs(plain) == frozenset(PSEUDO_DIRS)
    named = parse_rules("- devicematch: ^pts/[0-9]+$\n  nummaxdevices: 1\n")
    assert quiet_dirs(named) == frozenset(PSEUDO_DIRS) - {"pts"}
    assert "pts" not in quiet_dirs(parse_rules("- devicematch: ^pts$\n  nummaxdevices: 1\n"))

    root = HostRoot(host.root)
    assert "pts/0" not in {entry.path for entry in scan_dev(root)}
    assert [o.resource for o in DevSource(root, plain).scan()] == ["smarter-devices/ttyUSB0"]
    assert [o.resource for o in DevSource(root, named).scan()] == ["smarter-devices/pts_0"]


def test_the_deployed_default_rules_leave_every_pseudo_directory_quiet() -> None:
    import yaml

    deployed = REPO / "deploy/device-manager/rules-configmap.yaml"
    rules = parse_rules(yaml.safe_load(deployed.read_text())["data"]["conf.yaml"])
    assert quiet_dirs(rules) == frozenset(PSEUDO_DIRS)
