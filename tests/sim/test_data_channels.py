"""A core's data channel: UART1 published as an rpmsg-tty channel once the firmware announces it."""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.channels import ANNOUNCE
from smarter_common.remoteproc import RemoteCore, core_channels
from testbed.simulator import Simulator, running_simulator
from tests.sim.conftest import (
    ConsoleReader,
    core,
    firmware,
    install,
    wait_for_state,
    write_attr,
)

pytestmark = [pytest.mark.fuse, pytest.mark.qemu, pytest.mark.usefixtures("stop_cores")]

DATA_DEVICE = "virtio{index}.rpmsg-tty.-1.1025"


class Channel:
    """A data channel tty opened read-write, read without blocking the test forever."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.text = ""

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def read_until(self, needle: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} not on the channel; got {self.text!r}")
            if select.select([self.fd], [], [], remaining)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise AssertionError(f"the channel closed; got {self.text!r}")
                self.text += chunk.decode(errors="replace")
        return self.text

    def close(self) -> None:
        os.close(self.fd)


def start(simulator: Simulator, index: int, kind: str) -> RemoteCore:
    remote = core(simulator, index)
    cpu = remote.cpu
    assert cpu is not None
    name = f"{kind}-{cpu}.elf"
    install(simulator, firmware(kind, cpu), name)
    write_attr(remote.sysfs / "firmware", name)
    write_attr(remote.sysfs / "state", "start")
    return remote


def data_tty(simulator: Simulator, remote: RemoteCore, timeout: float = 15.0) -> Path:
    """The core's data channel node, once sysfs places it under the core."""
    deadline = time.monotonic() + timeout
    while True:
        found = core_channels(simulator.host, remote).data
        if found:
            assert len(found) == 1, found
            return found[0].node
        if time.monotonic() > deadline:
            raise AssertionError(f"{remote.device_id} announced no data channel")
        time.sleep(0.05)


def data_ttys(simulator: Simulator) -> list[str]:
    """Every `ttyRPMSG*` in the host's /dev that is not a core's console."""
    consoles = {f"ttyRPMSG{index}" for index in range(4)}
    names = {path.name for path in simulator.host.dev.glob("ttyRPMSG*")}
    return sorted(names - consoles)


def test_an_announced_channel_is_published_under_its_core_as_on_a_board(
    simulator: Simulator,
) -> None:
    remote = start(simulator, 1, "echo")
    node = data_tty(simulator, remote)

    device_name = DATA_DEVICE.format(index=1)
    tty = simulator.root / "sys/class/tty" / node.name
    device = Path(os.path.realpath(tty / "device"))
    vdev = Path(os.path.realpath(remote.sysfs)) / "remoteproc1#vdev0buffer" / "virtio1"
    assert device == vdev / device_name
    assert (device / "name").read_text() == "rpmsg-tty\n"
    assert (device / "dst").read_text() == "0x401\n"
    assert (device / "src").read_text() == "0x401\n"
    bus = simulator.root / "sys/bus/rpmsg/devices" / device_name
    assert os.path.realpath(bus) == str(device)
    assert sorted(os.listdir(vdev)) == ["virtio1.rpmsg-tty.-1.1024", device_name]
    assert os.path.realpath(node).startswith("/dev/pts/")
    channels = core_channels(simulator.host, remote)
    assert channels.console is not None and channels.console.node.name == "ttyRPMSG1"


def test_a_line_written_to_the_channel_is_echoed_and_the_console_still_speaks(
    simulator: Simulator,
) -> None:
    remote = start(simulator, 0, "echo")
    console = ConsoleReader(simulator.host.dev / "ttyRPMSG0")
    channel = Channel(data_tty(simulator, remote))
    try:
        console.read_until("echo on cortex-m3: ready\n")
        channel.send("hello firmware\n")
        channel.send("second line\n")

        assert channel.read_until("echo: second line\n") == (
            "echo: hello firmware\necho: second line\n"
        )
        console.read_until("echo on cortex-m3: second line\n")
    finally:
        channel.close()
        console.close()


def test_a_long_burst_reaches_the_firmware_whole_and_in_order(simulator: Simulator) -> None:
    remote = start(simulator, 2, "echo")
    channel = Channel(data_tty(simulator, remote))
    lines = [f"line {n:03d} " + "x" * 60 for n in range(40)]
    try:
        channel.send("".join(f"{line}\n" for line in lines))

        text = channel.read_until(f"echo: {lines[-1]}\n", timeout=30.0)
        assert text.splitlines() == [f"echo: {line}" for line in lines]
    finally:
        channel.close()


def test_the_announce_marker_and_output_before_it_never_reach_the_tty(
    simulator: Simulator,
) -> None:
    remote = start(simulator, 0, "sensor")
    channel = Channel(data_tty(simulator, remote))
    try:
        text = channel.read_until("reading 1 ")
        assert text.startswith("reading 1 ")
        assert ANNOUNCE.decode() not in text
    finally:
        channel.close()


def test_stopping_the_core_removes_the_channel_and_hangs_up_its_reader(
    simulator: Simulator,
) -> None:
    remote = start(simulator, 3, "echo")
    node = data_tty(simulator, remote)
    tty = simulator.root / "sys/class/tty" / node.name
    bus = simulator.root / "sys/bus/rpmsg/devices" / DATA_DEVICE.format(index=3)
    vdev = remote.sysfs / "remoteproc3#vdev0buffer" / "virtio3"
    reader = os.open(node, os.O_RDWR | os.O_NOCTTY)
    try:
        write_attr(remote.sysfs / "state", "stop")

        assert not os.path.lexists(node)
        assert not os.path.lexists(tty)
        assert not os.path.lexists(bus)
        assert os.listdir(vdev) == ["virtio3.rpmsg-tty.-1.1024"]
        assert core_channels(simulator.host, remote).data == ()
        assert os.read(reader, 100) == b""  # hung up: end of file, at once
        with pytest.raises(OSError) as raised:
            os.write(reader, b"anyone?\n")
        assert raised.value.errno == errno.EIO
    finally:
        os.close(reader)
    assert (simulator.host.dev / "ttyRPMSG3").exists()  # the console stays


def test_a_restarted_firmware_announces_a_new_tty(simulator: Simulator) -> None:
    remote = start(simulator, 1, "echo")
    first = data_tty(simulator, remote)
    write_attr(remote.sysfs / "state", "stop")
    write_attr(remote.sysfs / "state", "start")
    second = data_tty(simulator, remote)

    assert second != first
    assert int(second.name.removeprefix("ttyRPMSG")) > int(first.name.removeprefix("ttyRPMSG"))
    assert not os.path.lexists(first)
    assert data_ttys(simulator) == [second.name]
    channel = Channel(second)
    try:
        channel.send("again\n")
        channel.read_until("echo: again\n")
    finally:
        channel.close()


def test_a_crashed_and_recovered_firmware_announces_a_new_tty(simulator: Simulator) -> None:
    remote = start(simulator, 2, "echo")
    first = data_tty(simulator, remote)
    write_attr(remote.sysfs / "recovery", "disabled")
    # A QEMU that dies is a crash, as when the firmware locks the core up.
    os.kill(core_qemu_pid(simulator, remote), 9)
    wait_for_state(remote, "crashed")

    assert not os.path.lexists(first)
    assert data_ttys(simulator) == []
    write_attr(remote.sysfs / "recovery", "recover")
    assert data_tty(simulator, remote) != first


def test_a_firmware_that_never_announces_has_no_data_channel(simulator: Simulator) -> None:
    remote = start(simulator, 3, "hello")
    console = ConsoleReader(simulator.host.dev / "ttyRPMSG3")
    try:
        console.read_until("hello from cortex-m33 2\n")
    finally:
        console.close()
    assert core_channels(simulator.host, remote).data == ()
    assert data_ttys(simulator) == []


def test_the_sensor_streams_readings_and_obeys_a_rate_command(simulator: Simulator) -> None:
    remote = start(simulator, 1, "sensor")
    channel = Channel(data_tty(simulator, remote))
    try:
        channel.read_until("reading 1 ")
        channel.send("rate 50\n")
        channel.read_until("ok rate 50\n")
        began = time.monotonic()
        channel.read_until("reading 22 ", timeout=10.0)
        took = time.monotonic() - began

        # 20 periods of 50 ms (SysTick ticks every 10 ms) after the first reading at the new
        # rate; at the old rate of 1000 ms they would take 20 s.
        assert 0.8 < took < 4.0, took
        channel.send("rate fast\n")
        channel.read_until("error: rate must be 10 to 60000 ms\n")
    finally:
        channel.close()


def test_down_removes_an_announced_channel_and_everything_it_published(tmp_path: Path) -> None:
    with running_simulator(tmp_path, ["cortex-m4"]) as simulator:
        remote = start(simulator, 0, "echo")
        node = data_tty(simulator, remote)
        reader = os.open(node, os.O_RDONLY | os.O_NOCTTY)
        try:
            result = subprocess.run(
                [sys.executable, "-m", "sim", "down", "--root", str(tmp_path)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert simulator.process.wait(timeout=30) == 0
            assert os.read(reader, 100) == b""
        finally:
            os.close(reader)

    assert not os.path.lexists(node)
    assert not (tmp_path / "sys").exists()
    assert list(tmp_path.rglob("uart1*")) == []


def core_qemu_pid(simulator: Simulator, remote: RemoteCore) -> int:
    """The PID of the QEMU running `remote`'s firmware, from its command line."""
    image = f"cores/{remote.index}/firmware.elf"
    for pid in simulator.child_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "qemu-system-arm" in cmdline and image in cmdline:
            return pid
    raise AssertionError(f"no QEMU runs {remote.device_id}")
