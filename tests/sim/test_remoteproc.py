"""The simulated remoteproc sysfs: kernel transitions and errnos seen by plain open/write."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections.abc import Callable

import pytest

from smarter_common.procfs import process_alive
from smarter_common.remoteproc import (
    ATTR_FIRMWARE,
    ATTR_RECOVERY,
    ATTR_STATE,
    announced_console,
    console_device,
    discover_cores,
)
from smarter_common.remoteproc_control import (
    FIRMWARE_EMPTY,
    FIRMWARE_WHILE_RUNNING,
    RECOVERY_REJECTED,
    START_NO_FILE,
    START_WHILE_BUSY,
    STATE_REJECTED,
    RemoteCoreError,
    write_attribute,
)
from testbed.simulator import Simulator
from tests.sim.conftest import (
    CORES,
    ConsoleReader,
    core,
    firmware,
    install,
    wait_for_state,
    write_attr,
    write_errno,
)

pytestmark = [pytest.mark.fuse, pytest.mark.qemu, pytest.mark.usefixtures("stop_cores")]

Consoles = Callable[[int], ConsoleReader]


def test_cores_are_discovered_with_their_cpu(simulator: Simulator) -> None:
    cores = discover_cores(simulator.host)

    assert [c.device_id for c in cores] == [f"remoteproc{i}" for i in range(len(CORES))]
    assert [c.name for c in cores] == list(CORES)
    assert [c.cpu for c in cores] == list(CORES)
    assert [c.compatible for c in cores] == [[f"arm,{cpu}"] for cpu in CORES]
    assert (cores[0].sysfs / "device/of_node/compatible").read_bytes() == b"arm,cortex-m3\0"
    assert all(c.state() == "offline" for c in cores)
    assert all(c.firmware() == f"rproc-{c.device_id}-fw" for c in cores)


def test_every_core_has_a_console_device(simulator: Simulator) -> None:
    for remote in discover_cores(simulator.host):
        device = console_device(simulator.host, remote)
        assert device == simulator.host.dev / f"ttyRPMSG{remote.index}"
        assert stat.S_ISCHR(os.stat(device).st_mode)


def test_host_root_has_firmware_dirs_and_device_nodes(simulator: Simulator) -> None:
    host = simulator.host
    assert host.lib_firmware.is_dir()
    assert host.firmware_search_path_param.read_text() == "\n"
    assert (host.devicetree_base / "compatible").read_bytes() == b"smarter-edge,sim\0"
    expected = {"ttyUSB0": (188, 0), "ttyACM0": (166, 0), "i2c-1": (89, 1), "snd/timer": (116, 33)}
    for name, (major, minor) in expected.items():
        info = os.stat(host.dev / name)
        assert stat.S_ISCHR(info.st_mode)
        assert (os.major(info.st_rdev), os.minor(info.st_rdev)) == (major, minor)
    assert (host.run / "smarter-sim" / "ready").exists()
    assert (host.run / "smarter-sim" / "pid").read_text().strip() == str(simulator.pid)


def test_start_runs_the_firmware_and_its_lines_reach_the_console(
    simulator: Simulator, console_of: Consoles
) -> None:
    remote = core(simulator, 1)
    install(simulator, firmware("hello", "cortex-m4"), "hello-m4.elf")
    console = console_of(1)

    write_attr(remote.sysfs / "firmware", "hello-m4.elf\n")
    write_attr(remote.sysfs / "state", "start\n")

    assert remote.firmware() == "hello-m4.elf"
    assert remote.state() == "running"
    text = console.read_until("hello from cortex-m4 2\n")
    assert text.startswith("hello from cortex-m4 1\n")


@pytest.mark.parametrize("index", range(len(CORES)), ids=CORES)
def test_each_core_type_runs_on_its_machine(
    simulator: Simulator, console_of: Consoles, index: int
) -> None:
    cpu = CORES[index]
    remote = core(simulator, index)
    install(simulator, firmware("hello", cpu), f"hello-{cpu}.elf")
    console = console_of(index)

    write_attr(remote.sysfs / "firmware", f"hello-{cpu}.elf")
    write_attr(remote.sysfs / "state", "start")

    console.read_until(f"hello from {cpu} 1\n")


def test_stop_ends_qemu_and_returns_the_core_offline(simulator: Simulator) -> None:
    remote = core(simulator, 1)
    install(simulator, firmware("hello", "cortex-m4"), "hello-m4.elf")
    write_attr(remote.sysfs / "firmware", "hello-m4.elf")
    write_attr(remote.sysfs / "state", "start")
    qemus = simulator.child_pids()
    assert len(qemus) == 1

    write_attr(remote.sysfs / "state", "stop\n")

    assert remote.state() == "offline"
    assert not process_alive(qemus[0])
    assert simulator.child_pids() == []


def test_start_with_a_missing_firmware_fails_with_enoent(simulator: Simulator) -> None:
    remote = core(simulator, 1)
    write_attr(remote.sysfs / "firmware", "no-such-firmware.elf")

    assert write_errno(remote.sysfs / "state", "start\n") == errno.ENOENT
    assert remote.state() == "offline"
    assert simulator.child_pids() == []


def test_start_on_a_running_core_fails_with_ebusy(simulator: Simulator) -> None:
    remote = core(simulator, 1)
    install(simulator, firmware("hello", "cortex-m4"), "hello-m4.elf")
    write_attr(remote.sysfs / "firmware", "hello-m4.elf")
    write_attr(remote.sysfs / "state", "start")

    assert write_errno(remote.sysfs / "state", "start") == errno.EBUSY
    assert remote.state() == "running"
    assert len(simulator.child_pids()) == 1


def test_writing_firmware_while_running_fails_with_ebusy(simulator: Simulator) -> None:
    remote = core(simulator, 1)
    install(simulator, firmware("hello", "cortex-m4"), "hello-m4.elf")
    write_attr(remote.sysfs / "firmware", "hello-m4.elf")
    write_attr(remote.sysfs / "state", "start")

    assert write_errno(remote.sysfs / "firmware", "other.elf\n") == errno.EBUSY
    assert remote.firmware() == "hello-m4.elf"


def test_stop_on_an_offline_core_fails_with_einval(simulator: Simulator) -> None:
    remote = core(simulator, 0)

    assert write_errno(remote.sysfs / "state", "stop\n") == errno.EINVAL
    assert remote.state() == "offline"


def test_an_unknown_state_command_fails_with_einval(simulator: Simulator) -> None:
    remote = core(simulator, 0)

    assert write_errno(remote.sysfs / "state", "reboot\n") == errno.EINVAL
    assert remote.state() == "offline"


def test_an_empty_firmware_name_fails_with_einval(simulator: Simulator) -> None:
    remote = core(simulator, 0)
    before = remote.firmware()

    assert write_errno(remote.sysfs / "firmware", "\n") == errno.EINVAL
    assert remote.firmware() == before


def test_firmware_for_another_architecture_fails_with_einval(simulator: Simulator) -> None:
    remote = core(simulator, 0)  # a Cortex-M3 (v7-M) cannot run v8-M.main code
    install(simulator, firmware("hello", "cortex-m33"), "hello-m33.elf")
    write_attr(remote.sysfs / "firmware", "hello-m33.elf")

    assert write_errno(remote.sysfs / "state", "start") == errno.EINVAL
    assert remote.state() == "offline"
    assert simulator.child_pids() == []


def test_a_file_that_is_not_an_elf_fails_with_einval(simulator: Simulator) -> None:
    remote = core(simulator, 0)
    (simulator.host.lib_firmware / "notes.txt").write_text("not firmware\n")
    write_attr(remote.sysfs / "firmware", "notes.txt")

    assert write_errno(remote.sysfs / "state", "start") == errno.EINVAL
    assert remote.state() == "offline"
    assert simulator.child_pids() == []


def test_crashing_firmware_leaves_the_core_crashed(
    simulator: Simulator, console_of: Consoles
) -> None:
    remote = core(simulator, 2)
    install(simulator, firmware("crash", "cortex-m7", crash_after=1), "crash-m7.elf")
    console = console_of(2)
    write_attr(remote.sysfs / "recovery", "disabled")
    write_attr(remote.sysfs / "firmware", "crash-m7.elf")
    write_attr(remote.sysfs / "state", "start")

    console.read_until("*** HardFault ***")
    wait_for_state(remote, "crashed")

    assert console.text.startswith("hello from cortex-m7 1\ncrashing now\n")
    assert simulator.child_pids() == []


def test_a_crashed_core_refuses_start_stop_and_firmware_until_recovered(
    simulator: Simulator, console_of: Consoles
) -> None:
    remote = core(simulator, 2)
    install(simulator, firmware("crash", "cortex-m7", crash_after=3), "crash3-m7.elf")
    write_attr(remote.sysfs / "recovery", "disabled")
    write_attr(remote.sysfs / "firmware", "crash3-m7.elf")
    write_attr(remote.sysfs / "state", "start")
    wait_for_state(remote, "crashed")

    assert write_errno(remote.sysfs / "state", "start") == errno.EBUSY
    # The kernel's state_store takes `stop` only from a running core.
    assert write_errno(remote.sysfs / "state", "stop") == errno.EINVAL
    assert write_errno(remote.sysfs / "firmware", "other.elf") == errno.EBUSY
    console = console_of(2)
    write_attr(remote.sysfs / "recovery", "recover")
    assert remote.state() == "running"
    assert console.read_until("hello from cortex-m7 1\n") == "hello from cortex-m7 1\n"
    write_attr(remote.sysfs / "state", "stop")
    assert remote.state() == "offline"
    assert simulator.child_pids() == []


def test_recovery_is_enabled_by_default_and_restarts_a_crashed_firmware(
    simulator: Simulator, console_of: Consoles
) -> None:
    remote = core(simulator, 2)
    assert (remote.sysfs / "recovery").read_text() == "enabled\n"
    install(simulator, firmware("crash", "cortex-m7", crash_after=1), "crash-m7.elf")
    console = console_of(2)
    write_attr(remote.sysfs / "firmware", "crash-m7.elf")
    write_attr(remote.sysfs / "state", "start")

    deadline = time.monotonic() + 20
    while console.text.count("crashing now") < 2 and time.monotonic() < deadline:
        with contextlib.suppress(AssertionError):
            console.read_until("\0", timeout=0.2)  # reads what arrives meanwhile

    assert console.text.count("crashing now") >= 2, console.text
    assert remote.firmware() == "crash-m7.elf"
    write_attr(remote.sysfs / "recovery", "disabled")
    assert (remote.sysfs / "recovery").read_text() == "disabled\n"


def test_an_unknown_recovery_command_fails_with_einval(simulator: Simulator) -> None:
    assert write_errno(core(simulator, 0).sysfs / "recovery", "sometimes") == errno.EINVAL


def test_each_console_tty_is_published_in_sysfs_under_its_core(simulator: Simulator) -> None:
    for remote in discover_cores(simulator.host):
        tty = simulator.root / "sys" / "class" / "tty" / f"ttyRPMSG{remote.index}"
        device = os.path.realpath(tty / "device")
        assert device.startswith(os.path.realpath(remote.sysfs) + "/")
        assert os.path.isdir(device)
        assert announced_console(simulator.host, remote) == simulator.host.dev / tty.name


def test_a_restarted_core_keeps_its_console_and_starts_it_clean(
    simulator: Simulator, console_of: Consoles
) -> None:
    remote = core(simulator, 1)
    install(simulator, firmware("hello", "cortex-m4"), "hello-m4.elf")
    link = simulator.host.dev / "ttyRPMSG1"
    slave = os.readlink(link)
    write_attr(remote.sysfs / "firmware", "hello-m4.elf")
    write_attr(remote.sysfs / "state", "start")
    console_of(1).read_until("hello from cortex-m4 1\n")
    write_attr(remote.sysfs / "state", "stop")
    write_attr(remote.sysfs / "state", "start")

    assert os.readlink(link) == slave
    assert console_of(1).read_until("\n") == "hello from cortex-m4 1\n"


def test_the_firmware_path_parameter_is_searched_before_lib_firmware(simulator: Simulator) -> None:
    remote = core(simulator, 1)
    custom = simulator.root / "opt" / "firmware"
    custom.mkdir(parents=True)
    # The same name in both places: only the one in the custom path fits a Cortex-M4.
    install(simulator, firmware("hello", "cortex-m33"), "app.elf")
    (custom / "app.elf").write_bytes(firmware("hello", "cortex-m4").read_bytes())
    param = simulator.host.firmware_search_path_param
    param.write_text("/opt/firmware\n")
    try:
        write_attr(remote.sysfs / "firmware", "app.elf")
        write_attr(remote.sysfs / "state", "start")
        assert remote.state() == "running"
    finally:
        param.write_text("\n")


def test_name_is_read_only(simulator: Simulator) -> None:
    remote = core(simulator, 0)

    assert write_errno(remote.sysfs / "name", "cortex-m7") == errno.EACCES
    assert remote.name == "cortex-m3"


def test_only_root_may_write_but_anyone_may_read(simulator: Simulator) -> None:
    remote = core(simulator, 0)
    results = {}
    for flags in (os.O_WRONLY, os.O_RDONLY):
        pid = os.fork()
        if pid == 0:  # the child: become nobody, then open relative to the core's directory
            code = 0
            try:
                os.chdir(remote.sysfs)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                os.close(os.open("state", flags))
            except OSError as error:
                code = error.errno or 255
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        results[flags] = os.waitstatus_to_exitcode(status)

    assert results == {os.O_WRONLY: errno.EACCES, os.O_RDONLY: 0}


def test_a_firmware_name_leaving_the_firmware_dirs_fails_with_enoent(simulator: Simulator) -> None:
    remote = core(simulator, 1)
    (simulator.root / "outside.elf").write_bytes(firmware("hello", "cortex-m4").read_bytes())
    try:
        write_attr(remote.sysfs / "firmware", "../../outside.elf")

        assert write_errno(remote.sysfs / "state", "start") == errno.ENOENT
        assert remote.state() == "offline"
        assert simulator.child_pids() == []
    finally:
        (simulator.root / "outside.elf").unlink()


def test_a_firmware_in_a_subdirectory_is_found(simulator: Simulator) -> None:
    remote = core(simulator, 1)
    vendor = simulator.host.lib_firmware / "vendor"
    vendor.mkdir(exist_ok=True)
    (vendor / "app.elf").write_bytes(firmware("hello", "cortex-m4").read_bytes())

    write_attr(remote.sysfs / "firmware", "vendor/app.elf")
    write_attr(remote.sysfs / "state", "start")

    assert remote.state() == "running"


def test_a_core_that_locks_up_ends_crashed(simulator: Simulator, console_of: Consoles) -> None:
    remote = core(simulator, 0)
    install(simulator, firmware("lockup", "cortex-m3", crash_after=1), "lockup-m3.elf")
    console = console_of(0)
    write_attr(remote.sysfs / "recovery", "disabled")
    write_attr(remote.sysfs / "firmware", "lockup-m3.elf")
    write_attr(remote.sysfs / "state", "start")
    qemus = simulator.child_pids()

    console.read_until("locking up now\n")
    wait_for_state(remote, "crashed")

    assert "HardFault" not in console.text  # no handler ran: QEMU itself gave up on the core
    assert qemus and not any(process_alive(pid) for pid in qemus)


def test_a_core_spinning_silently_in_its_fault_handler_ends_crashed(
    simulator: Simulator, console_of: Consoles
) -> None:
    # Many vendor startup files' fault handlers are a bare loop: nothing reaches the console.
    remote = core(simulator, 1)
    install(simulator, firmware("hang", "cortex-m4", crash_after=1), "hang-m4.elf")
    console = console_of(1)
    write_attr(remote.sysfs / "recovery", "disabled")
    write_attr(remote.sysfs / "firmware", "hang-m4.elf")
    write_attr(remote.sysfs / "state", "start")
    qemus = simulator.child_pids()

    console.read_until("crashing now\n")
    wait_for_state(remote, "crashed")

    assert "HardFault" not in console.text
    assert qemus and not any(process_alive(pid) for pid in qemus)


def test_concurrent_starts_run_the_core_once(simulator: Simulator) -> None:
    remote = core(simulator, 1)
    install(simulator, firmware("hello", "cortex-m4"), "hello-m4.elf")
    write_attr(remote.sysfs / "firmware", "hello-m4.elf")
    outcomes: list[int] = []

    def start() -> None:
        try:
            write_attr(remote.sysfs / "state", "start")
            outcomes.append(0)
        except OSError as error:
            outcomes.append(error.errno or -1)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == [0, errno.EBUSY, errno.EBUSY, errno.EBUSY]
    assert len(simulator.child_pids()) == 1


def test_every_refusal_of_an_idle_core_reads_as_the_shared_meaning(simulator: Simulator) -> None:
    # The simulator raises remoteproc_control's errnos and the runtime translates them with the
    # same table: each refusal reaches a writer as the meaning the runtime reports.
    remote = core(simulator, 0)
    cases = [
        (ATTR_FIRMWARE, "\n", FIRMWARE_EMPTY),
        (ATTR_STATE, "stop", STATE_REJECTED),
        (ATTR_STATE, "reboot", STATE_REJECTED),
        (ATTR_RECOVERY, "sometimes", RECOVERY_REJECTED),
    ]
    for attribute, value, refusal in cases:
        with pytest.raises(RemoteCoreError) as raised:
            write_attribute(remote, attribute, value)
        assert str(raised.value).endswith(f"failed: {refusal.meaning}"), (attribute, value)
    write_attribute(remote, ATTR_FIRMWARE, "no-such-firmware.elf")
    with pytest.raises(RemoteCoreError) as raised:
        write_attribute(remote, ATTR_STATE, "start")
    assert str(raised.value) == "writing 'start' to remoteproc0/state failed: " + (
        START_NO_FILE.meaning.format(firmware="no-such-firmware.elf")
    )
    assert str(raised.value).endswith("the firmware loader found no file 'no-such-firmware.elf'")


def test_refusals_of_a_running_core_read_as_the_shared_meaning(simulator: Simulator) -> None:
    remote = core(simulator, 1)
    install(simulator, firmware("hello", "cortex-m4"), "hello-m4.elf")
    write_attribute(remote, ATTR_FIRMWARE, "hello-m4.elf")
    write_attribute(remote, ATTR_STATE, "start")

    for attribute, value, refusal in [
        (ATTR_STATE, "start", START_WHILE_BUSY),
        (ATTR_FIRMWARE, "other.elf", FIRMWARE_WHILE_RUNNING),
    ]:
        with pytest.raises(RemoteCoreError) as raised:
            write_attribute(remote, attribute, value)
        assert str(raised.value).endswith(f"failed: {refusal.meaning}"), attribute
