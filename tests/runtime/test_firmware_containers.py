"""Firmware containers on the simulated gateway, driven exactly as containerd's runc shim does.

The test process is a child subreaper like the shim, so it reaps each container's supervisor
and sees its exit status. Firmware is built by the tests with arm-none-eabi-gcc and runs in QEMU.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smarter_common.locks import is_locked
from smarter_common.remoteproc import console_device
from testbed.simulator import Simulator

from . import firmware_shim
from .conftest import RUNC, RUNTIME, MakeBundle, log_messages
from .firmware_shim import (
    CORES,
    X86_64_ELF,
    Shim,
    core,
    core_lock,
    firmware,
    fw_bundle,
    pipe,
    read_lines,
)

pytestmark = [pytest.mark.fuse, pytest.mark.qemu]

# The firmware containers' fixtures: a simulated gateway, a subreaper, the shim's calls.
simulator = firmware_shim.simulator
subreaper = firmware_shim.subreaper
shim = firmware_shim.shim


def test_full_cycle_runs_firmware_and_copies_its_console(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    m4 = core(simulator, 0)
    with pipe() as (read_end, write_end):
        created = shim.create(bundle, "fw1", stdout=write_end)
        os.close(write_end)
        assert created.returncode == 0, log_messages(bundle / "log.json")
        pid = shim.supervisors["fw1"]
        reported = shim.state(bundle, "fw1")
        assert reported == {
            # The bundle's version, as runc reports it (`runc spec` writes 1.0.2-dev).
            "ociVersion": json.loads((bundle / "config.json").read_text())["ociVersion"],
            "id": "fw1",
            "pid": pid,
            "status": "created",
            "bundle": str(bundle),
            "rootfs": str(bundle / "rootfs"),
            "created": reported["created"],
            "annotations": {},
            "owner": "",
        }
        assert reported["ociVersion"] == "1.0.2-dev"
        assert_recent_rfc3339(str(reported["created"]))
        assert m4.state() == "offline"
        assert is_locked(core_lock(simulator, 0))

        assert shim.call(bundle, "start", "fw1").returncode == 0
        assert m4.state() == "running"
        assert m4.firmware() == "smarter-fw1.elf"
        assert (simulator.host.lib_firmware / "smarter-fw1.elf").is_file()
        assert read_lines(read_end, 2) == ["hello from cortex-m4 1", "hello from cortex-m4 2"]
        assert shim.state(bundle, "fw1")["status"] == "running"

        assert shim.call(bundle, "kill", "fw1", "TERM").returncode == 0
        assert shim.wait_exit("fw1") == 128 + signal.SIGTERM
    assert m4.state() == "offline"
    stopped = shim.state(bundle, "fw1")
    assert (stopped["status"], stopped["pid"]) == ("stopped", 0)

    assert shim.call(bundle, "delete", "fw1").returncode == 0
    assert not (shim.root / "smarter-hybrid" / "fw1").exists()
    assert not (simulator.host.lib_firmware / "smarter-fw1.elf").exists()
    assert not is_locked(core_lock(simulator, 0))
    assert shim.call(bundle, "state", "fw1").returncode == 1
    assert log_messages(bundle / "log.json") == ["container does not exist"]


def test_crashing_firmware_ends_the_container_with_a_failure(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("crash", "cortex-m4", crash_after=1))
    with pipe() as (read_end, write_end):
        assert shim.create(bundle, "crashy", stdout=write_end).returncode == 0
        os.close(write_end)
        assert shim.call(bundle, "start", "crashy").returncode == 0
        assert read_lines(read_end, 2) == ["hello from cortex-m4 1", "crashing now"]
        assert shim.wait_exit("crashy") == 1
    assert core(simulator, 0).state() == "crashed"
    assert (
        "smarter-hybrid-runtime: remoteproc0 crashed running smarter-crashy.elf"
        in (bundle / "stderr").read_text()
    )
    assert log_messages(bundle / "log.json") == ["remoteproc0 crashed running smarter-crashy.elf"]
    assert shim.state(bundle, "crashy")["status"] == "stopped"

    assert shim.call(bundle, "delete", "crashy").returncode == 0
    assert core(simulator, 0).state() == "offline"
    assert not (simulator.host.lib_firmware / "smarter-crashy.elf").exists()


def test_delete_force_stops_a_running_core(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(
        make_bundle, firmware("hello", "cortex-m3"), env=["SMARTER_RPROC=remoteproc1"]
    )
    assert shim.create(bundle, "fw3").returncode == 0
    assert shim.call(bundle, "start", "fw3").returncode == 0
    assert core(simulator, 1).state() == "running"

    refused = shim.call(bundle, "delete", "fw3")
    assert refused.returncode == 1
    assert log_messages(bundle / "log.json") == [
        "cannot delete container fw3 that is not stopped: running"
    ]

    assert shim.call(bundle, "delete", "--force", "fw3").returncode == 0
    assert shim.wait_exit("fw3") == 128 + signal.SIGKILL
    assert core(simulator, 1).state() == "offline"
    assert not (shim.root / "smarter-hybrid" / "fw3").exists()
    assert not (simulator.host.lib_firmware / "smarter-fw3.elf").exists()
    assert not is_locked(core_lock(simulator, 1))


def test_kill_before_start_never_starts_the_core(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    assert shim.create(bundle, "early").returncode == 0
    assert shim.call(bundle, "kill", "early", "KILL").returncode == 0
    assert shim.wait_exit("early") == 128 + signal.SIGKILL
    assert core(simulator, 0).state() == "offline"
    assert shim.call(bundle, "delete", "early").returncode == 0
    assert not is_locked(core_lock(simulator, 0))


# Issue 16: kill -> stopped pays for every import of `kill`; these serve only other commands.
_NOT_FOR_KILL = (
    "runtime_handler.firmware_commands",
    "runtime_handler.supervisor",
    "runtime_handler.data_channels",
    "runtime_handler.core_select",
    "smarter_common.remoteproc",
    "smarter_common.remoteproc_control",
)
# `main` as the runtime's executable runs it, then the exit code and our modules it imported.
_KILL_PROBE = (
    "import sys\n"
    "from runtime_handler.__main__ import main\n"
    "code = main(sys.argv[1:])\n"
    "ours = ('runtime_handler', 'smarter_common')\n"
    "print(code, *sorted(name for name in sys.modules if name.startswith(ours)))\n"
)


def test_kill_of_a_running_firmware_container_imports_only_what_kill_needs(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    assert shim.create(bundle, "quick").returncode == 0
    assert shim.call(bundle, "start", "quick").returncode == 0
    argv = [*shim.globals_for(bundle), "kill", "quick", "TERM"]
    probe = subprocess.run(
        [sys.executable, "-c", _KILL_PROBE, *argv],
        env=dict(shim.env), capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    code, *imported = probe.stdout.split()
    assert code == "0", log_messages(bundle / "log.json")
    assert "runtime_handler.firmware_kill" in imported, "the probe did not see kill: it is blind"
    assert not sorted(set(imported) & set(_NOT_FOR_KILL))
    assert shim.wait_exit("quick") == 128 + signal.SIGTERM
    assert core(simulator, 0).state() == "offline"


def test_second_container_for_a_reserved_core_is_refused(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    hello = firmware("hello", "cortex-m4")
    first = fw_bundle(make_bundle, hello, env=["SMARTER_RPROC=remoteproc0"])
    assert shim.create(first, "owner").returncode == 0
    second = fw_bundle(make_bundle, hello, env=["SMARTER_RPROC=remoteproc0"])

    refused = shim.create(second, "intruder")

    assert refused.returncode == 1
    assert log_messages(second / "log.json") == ["remoteproc0 is reserved by another container"]
    assert not (shim.root / "smarter-hybrid" / "intruder").exists()
    assert not (second / "init.pid").exists()
    assert is_locked(core_lock(simulator, 0)), "the first container keeps its reservation"


def test_core_running_outside_any_container_is_refused(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    m4 = core(simulator, 0)
    (simulator.host.lib_firmware / "other.elf").write_bytes(
        firmware("hello", "cortex-m4").read_bytes()
    )
    (m4.sysfs / "firmware").write_text("other.elf")
    (m4.sysfs / "state").write_text("start")
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))

    refused = shim.create(bundle, "late")

    assert refused.returncode == 1
    [message] = log_messages(bundle / "log.json")
    assert message.startswith("no free core runs /firmware.elf (built for ARM v7E-M): ")
    assert "remoteproc0 is running firmware other.elf, expected offline" in message
    assert "remoteproc1: /firmware.elf is built for ARM v7E-M, but the core is a cortex-m3" in (
        message
    )
    assert m4.firmware() == "other.elf"
    assert_nothing_left(shim, simulator, bundle, "late")


RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def assert_recent_rfc3339(stamp: str) -> None:
    """runc's `created`: RFC 3339 in UTC with nanoseconds, and a moment ago."""
    assert RFC3339_NANO.match(stamp), stamp
    when = datetime.datetime.strptime(stamp[:26] + "Z", "%Y-%m-%dT%H:%M:%S.%fZ")
    age = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - when
    assert datetime.timedelta(0) <= age < datetime.timedelta(seconds=60), stamp


def assert_nothing_left(shim: Shim, simulator: Simulator, bundle: Path, container_id: str) -> None:
    assert not (shim.root / "smarter-hybrid" / container_id).exists()
    assert not (bundle / "init.pid").exists()
    assert not (simulator.host.lib_firmware / f"smarter-{container_id}.elf").exists()
    for index in range(len(CORES)):
        assert not is_locked(core_lock(simulator, index))


REFUSALS: dict[str, tuple[Callable[[], Path | bytes | None], list[str], str]] = {
    "wrong-core": (
        lambda: firmware("hello", "cortex-m33"),
        ["SMARTER_RPROC=remoteproc0"],
        "remoteproc0: /firmware.elf is built for ARM v8-M.main, but the core is a"
        " cortex-m4, which runs v6-M, v6S-M, v7-M, v7E-M"
        " (rebuild the firmware for this core or request a core of the right type)",
    ),
    "x86-64": (
        lambda: X86_64_ELF,
        [],
        "/firmware.elf is a 64-bit X86_64 ELF, not microcontroller firmware"
        " (build it for a Cortex-M or Cortex-R core, e.g. arm-none-eabi-gcc -mcpu=cortex-m4)",
    ),
    "not-elf": (
        lambda: b"#!/bin/sh\necho not firmware\n",
        [],
        "firmware container entrypoint /firmware.elf is not an ELF file"
        " (build the firmware with arm-none-eabi-gcc -mcpu=<core> and package the .elf)",
    ),
    "missing-entrypoint": (
        lambda: None,
        [],
        "firmware container entrypoint /firmware.elf does not exist in the root filesystem"
        " {rootfs} (a firmware image holds its ELF at /firmware.elf and names it as entrypoint)",
    ),
    "missing-core": (
        lambda: firmware("hello", "cortex-m4"),
        ["SMARTER_RPROC=remoteproc9"],
        "SMARTER_RPROC=remoteproc9 names a core that does not exist;"
        " this host's cores: remoteproc0, remoteproc1"
        " (the device manager sets SMARTER_RPROC; request smarter-devices/rprocN)",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal_says_why_and_leaves_nothing(
    case: str, shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    elf, env, expected = REFUSALS[case]
    bundle = fw_bundle(make_bundle, elf(), env=env)

    refused = shim.create(bundle, f"bad-{case}")

    assert refused.returncode == 1
    expected_message = expected.format(rootfs=bundle / "rootfs")
    assert log_messages(bundle / "log.json") == [expected_message]
    assert expected_message in (bundle / "stderr").read_text()
    assert_nothing_left(shim, simulator, bundle, f"bad-{case}")
    assert [core(simulator, i).state() for i in range(len(CORES))] == ["offline", "offline"]


def test_firmware_for_another_board_is_refused(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(
        make_bundle,
        firmware("hello", "cortex-m4"),
        annotations={"smarter-edge.io/board": "imx8mm-evk"},
    )
    refused = shim.create(bundle, "elsewhere")
    assert refused.returncode == 1
    assert log_messages(bundle / "log.json") == [
        "firmware is for board 'imx8mm-evk', but this board is 'smarter-edge simulated gateway'"
        " (smarter-edge,sim) (schedule the pod on a node with that board (nodeSelector)"
        " or rebuild the firmware)"
    ]
    assert_nothing_left(shim, simulator, bundle, "elsewhere")


def test_without_smarter_rproc_each_container_gets_the_next_free_core(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    m3_firmware = firmware("hello", "cortex-m3")
    first = fw_bundle(make_bundle, m3_firmware)
    second = fw_bundle(make_bundle, m3_firmware)
    assert shim.create(first, "one").returncode == 0
    assert shim.create(second, "two").returncode == 0
    assert shim.call(first, "start", "one").returncode == 0
    assert shim.call(second, "start", "two").returncode == 0
    assert core(simulator, 0).firmware() == "smarter-one.elf"
    assert core(simulator, 1).firmware() == "smarter-two.elf"
    assert [core(simulator, i).state() for i in range(len(CORES))] == ["running", "running"]


def test_run_is_refused_for_firmware(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    result = shim.call(bundle, "run", "--bundle", str(bundle), "--detach", "norun")
    assert result.returncode == 1
    assert log_messages(bundle / "log.json") == [
        "run is not supported for firmware containers: use create, then start"
    ]
    assert_nothing_left(shim, simulator, bundle, "norun")


def test_core_stopped_from_outside_ends_the_container_cleanly(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    assert shim.create(bundle, "outside").returncode == 0
    assert shim.call(bundle, "start", "outside").returncode == 0
    (core(simulator, 0).sysfs / "state").write_text("stop")
    assert shim.wait_exit("outside") == 0
    assert shim.state(bundle, "outside")["status"] == "stopped"


def test_start_never_replaces_a_firmware_file_it_did_not_make(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    squatter = simulator.host.lib_firmware / "smarter-clash.elf"
    squatter.write_bytes(b"someone else's\n")
    try:
        bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
        assert shim.create(bundle, "clash").returncode == 0

        started = shim.call(bundle, "start", "clash")

        message = f"firmware file {squatter} already exists and belongs to another container"
        assert started.returncode == 1
        assert started.stderr.strip() == message
        assert shim.wait_exit("clash") == 1
        assert squatter.read_bytes() == b"someone else's\n"
        assert core(simulator, 0).state() == "offline"
        assert shim.call(bundle, "delete", "clash").returncode == 0
        assert squatter.read_bytes() == b"someone else's\n"
        assert not is_locked(core_lock(simulator, 0))
    finally:
        squatter.unlink()


def test_terminal_is_refused_for_firmware(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = True
    (bundle / "config.json").write_text(json.dumps(config))

    refused = shim.create(bundle, "tty")

    assert refused.returncode == 1
    assert log_messages(bundle / "log.json") == [
        "firmware containers have no terminal: set tty: false (process.terminal)"
    ]
    assert_nothing_left(shim, simulator, bundle, "tty")


def test_firmware_that_crashes_at_once_has_started_and_exits_non_zero(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("crash", "cortex-m4", crash_after=0))
    with pipe() as (read_end, write_end):
        assert shim.create(bundle, "sudden", stdout=write_end).returncode == 0
        os.close(write_end)
        started = shim.call(bundle, "start", "sudden")
        assert started.returncode == 0, started.stderr
        assert read_lines(read_end, 1) == ["crashing now"]
        assert shim.wait_exit("sudden") == 1
    assert shim.call(bundle, "delete", "sudden").returncode == 0
    assert core(simulator, 0).state() == "offline"


def runc_log_messages(tmp_path: Path, *args: str) -> list[str]:
    """What the installed runc logs (JSON) for `args` under a --root of its own."""
    root = tmp_path / "runc-only"
    root.mkdir(exist_ok=True)
    log = tmp_path / "runc-log.json"
    log.unlink(missing_ok=True)
    subprocess.run(
        [RUNC, "--root", str(root), "--log", str(log), "--log-format", "json", *args],
        capture_output=True,
        check=False,
    )
    return log_messages(log)


@pytest.mark.parametrize("bad_id", ["../x", "..", ".", "a/b", "x y", "caf\u00e9"])
@pytest.mark.parametrize("command", ["delete", "state", "kill"])
def test_malformed_container_id_is_refused_in_runcs_words_before_any_path_is_built(
    command: str, bad_id: str, shim: Shim, tmp_path: Path, make_bundle: MakeBundle
) -> None:
    # `delete ../x` would name <root>/smarter-hybrid/../x = <root>/x: a directory of someone else.
    victim = shim.root / "x"
    victim.mkdir()
    (victim / "state.json").write_text("{}")
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    args = [command, "--force", bad_id] if command == "delete" else [command, bad_id]

    result = shim.call(bundle, *args)

    assert result.returncode == 1
    assert log_messages(bundle / "log.json") == ["invalid container ID format"]
    assert log_messages(bundle / "log.json") == runc_log_messages(tmp_path, *args)
    assert (victim / "state.json").read_text() == "{}"


def test_create_with_a_malformed_id_is_refused_and_leaves_nothing(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    refused = shim.create(bundle, "../escape")
    assert refused.returncode == 1
    assert log_messages(bundle / "log.json") == ["invalid container ID format"]
    assert not (shim.root / "escape").exists()
    assert not (shim.root / "smarter-hybrid").exists()
    for index in range(len(CORES)):
        assert not is_locked(core_lock(simulator, index))


def test_second_create_with_the_same_id_is_refused_in_runcs_words(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    first = fw_bundle(make_bundle, firmware("hello", "cortex-m3"))
    second = fw_bundle(make_bundle, firmware("hello", "cortex-m3"))
    assert shim.create(first, "twin").returncode == 0

    refused = shim.create(second, "twin")

    assert refused.returncode == 1
    # Debian's runc 1.1.5 says exactly this (libcontainer ErrExist).
    assert log_messages(second / "log.json") == ["container with given ID already exists"]
    assert (shim.root / "smarter-hybrid" / "twin" / "state.json").is_file()
    assert not is_locked(core_lock(simulator, 1)), "the refused create reserved nothing"


def test_concurrent_creates_with_one_id_give_one_container_and_runcs_error(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundles = [fw_bundle(make_bundle, firmware("hello", "cortex-m3")) for _ in range(2)]
    calls = []
    for bundle in bundles:
        # A file, not a pipe: the winner's supervisor keeps its stderr open.
        with (bundle / "stderr").open("w") as stderr:
            calls.append(
                subprocess.Popen(
                    [
                        str(RUNTIME),
                        *shim.globals_for(bundle),
                        "create",
                        "--bundle",
                        str(bundle),
                        "--pid-file",
                        str(bundle / "init.pid"),
                        "race",
                    ],
                    env=dict(shim.env),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            )
    codes = [call.wait(timeout=60) for call in calls]
    outcomes = [(code, (b / "stderr").read_text()) for code, b in zip(codes, bundles, strict=True)]
    for bundle in bundles:
        if (bundle / "init.pid").exists():
            shim.supervisors["race"] = int((bundle / "init.pid").read_text())

    assert sorted(code for code, _ in outcomes) == [0, 1], outcomes
    assert all("Traceback" not in err for _, err in outcomes), outcomes
    messages = [m for bundle in bundles for m in log_messages(bundle / "log.json")]
    assert messages == ["container with given ID already exists"]


def test_kill_all_on_a_stopped_firmware_container_succeeds_like_runc(
    shim: Shim, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    assert shim.create(bundle, "done").returncode == 0
    assert shim.call(bundle, "start", "done").returncode == 0
    assert shim.call(bundle, "kill", "done", "TERM").returncode == 0
    assert shim.wait_exit("done") == 128 + signal.SIGTERM

    assert shim.call(bundle, "kill", "--all", "done", "KILL").returncode == 0
    assert shim.call(bundle, "kill", "-a", "done", "9").returncode == 0
    plain = shim.call(bundle, "kill", "done", "KILL")
    assert plain.returncode == 1
    assert log_messages(bundle / "log.json") == ["container not running"]


def test_unusable_firmware_search_path_is_reported_in_the_log_not_as_a_traceback(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    parameter = simulator.host.firmware_search_path_param
    parameter.write_text("/../outside\n")
    try:
        bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
        refused = shim.create(bundle, "nowhere")
    finally:
        parameter.write_text("\n")
    assert refused.returncode == 1
    [message] = log_messages(bundle / "log.json")
    assert message.startswith(
        "cannot place firmware: the kernel's firmware search path '/../outside' is unusable"
    )
    assert "Traceback" not in (bundle / "stderr").read_text()
    assert_nothing_left(shim, simulator, bundle, "nowhere")


def test_crashed_core_is_recovered_then_stopped_before_it_takes_new_firmware(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    m4 = core(simulator, 0)
    crashing = fw_bundle(
        make_bundle,
        firmware("crash", "cortex-m4", crash_after=2),
        env=["SMARTER_RPROC=remoteproc0"],
    )
    assert shim.create(crashing, "first").returncode == 0
    assert shim.call(crashing, "start", "first").returncode == 0
    # The runtime turned the kernel's automatic recovery off: the crash ends the container.
    assert (m4.sysfs / "recovery").read_text() == "disabled\n"
    assert shim.wait_exit("first") == 1
    assert m4.state() == "crashed"

    hello = fw_bundle(
        make_bundle, firmware("hello", "cortex-m4"), env=["SMARTER_RPROC=remoteproc0"]
    )
    with pipe() as (read_end, write_end):
        assert shim.create(hello, "second", stdout=write_end).returncode == 0
        os.close(write_end)
        started = shim.call(hello, "start", "second")
        assert started.returncode == 0, log_messages(hello / "log.json")
        assert read_lines(read_end, 1) == ["hello from cortex-m4 1"]
    assert m4.firmware() == "smarter-second.elf"
    assert m4.state() == "running"
    assert shim.call(crashing, "delete", "first").returncode == 0
    assert m4.state() == "running", "deleting the crashed container leaves the new one alone"


def test_an_offline_core_is_chosen_before_a_crashed_one(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    # Cortex-M3 firmware runs on both cores: the M4 (remoteproc0) and the M3 (remoteproc1).
    crashing = fw_bundle(
        make_bundle,
        firmware("crash", "cortex-m3", crash_after=0),
        env=["SMARTER_RPROC=remoteproc0"],
    )
    assert shim.create(crashing, "crashed").returncode == 0
    assert shim.call(crashing, "start", "crashed").returncode == 0
    assert shim.wait_exit("crashed") == 1
    assert core(simulator, 0).state() == "crashed"

    later = fw_bundle(make_bundle, firmware("hello", "cortex-m3"))
    assert shim.create(later, "later").returncode == 0
    assert shim.call(later, "start", "later").returncode == 0
    assert core(simulator, 1).firmware() == "smarter-later.elf"
    assert core(simulator, 0).state() == "crashed"


@contextlib.contextmanager
def renumbered_console(simulator: Simulator, index: int, new: int) -> Iterator[None]:
    """Core `index`'s tty as `ttyRPMSG<new>`, and `ttyRPMSG<index>` another core's, as on a
    board where the firmware of another core announced its channel first."""
    dev, ttys = simulator.host.dev, simulator.root / "sys" / "class" / "tty"
    other = (index + 1) % len(CORES)
    (dev / f"ttyRPMSG{index}").rename(dev / f"ttyRPMSG{new}")
    (ttys / f"ttyRPMSG{index}").rename(ttys / f"ttyRPMSG{new}")
    (dev / f"ttyRPMSG{index}").symlink_to(os.readlink(dev / f"ttyRPMSG{other}"))
    try:
        yield
    finally:
        (dev / f"ttyRPMSG{index}").unlink()
        (dev / f"ttyRPMSG{new}").rename(dev / f"ttyRPMSG{index}")
        (ttys / f"ttyRPMSG{new}").rename(ttys / f"ttyRPMSG{index}")


def test_console_is_the_tty_sysfs_places_under_the_core_whatever_its_number(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    with renumbered_console(simulator, 0, 7), pipe() as (read_end, write_end):
        assert shim.create(bundle, "numbered", stdout=write_end).returncode == 0
        os.close(write_end)
        assert shim.call(bundle, "start", "numbered").returncode == 0
        assert read_lines(read_end, 1) == ["hello from cortex-m4 1"]
        # The device manager's lookup follows sysfs too.
        assert console_device(simulator.host, core(simulator, 0)) == (
            simulator.host.dev / "ttyRPMSG7"
        )


def test_a_console_that_never_appears_is_logged_and_the_firmware_still_runs(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    dev, ttys = simulator.host.dev, simulator.root / "sys" / "class" / "tty"
    hidden = simulator.root / "hidden"
    hidden.mkdir(exist_ok=True)
    (dev / "ttyRPMSG0").rename(hidden / "dev-tty")
    (ttys / "ttyRPMSG0").rename(hidden / "sys-tty")
    shim.extra_env["SMARTER_CONSOLE_TIMEOUT"] = "0.3"
    try:
        bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
        assert shim.create(bundle, "mute").returncode == 0
        assert shim.call(bundle, "start", "mute").returncode == 0
        assert core(simulator, 0).state() == "running"
        assert shim.state(bundle, "mute")["status"] == "running"
    finally:
        (hidden / "dev-tty").rename(dev / "ttyRPMSG0")
        (hidden / "sys-tty").rename(ttys / "ttyRPMSG0")
    entries = [json.loads(line) for line in (bundle / "log.json").read_text().splitlines()]
    [warning] = [entry for entry in entries if entry["msg"] == "console_missing"]
    assert (warning["level"], warning["core"], warning["waited"]) == (
        "warning",
        "remoteproc0",
        0.3,
    )


@pytest.mark.parametrize("with_log", [True, False], ids=["log-file", "log-on-stderr"])
def test_a_lost_stdio_reader_loses_neither_the_container_nor_its_core(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle, with_log: bool
) -> None:
    # The shim dies (or the log pipes close) while the firmware runs; then the firmware crashes.
    shim.with_log = with_log
    bundle = fw_bundle(make_bundle, firmware("crash", "cortex-m4", crash_after=2))
    m4 = core(simulator, 0)
    with pipe() as (out_read, out_write), pipe() as (err_read, err_write):
        created = shim.create(bundle, "lost", stdout=out_write, stderr_fd=err_write)
        assert created.returncode == 0, created.stderr
        for fd in (out_write, err_write, out_read, err_read):
            os.close(fd)
    assert shim.call(bundle, "start", "lost").returncode == 0
    assert shim.wait_exit("lost") == 1

    stopped = shim.state(bundle, "lost")
    assert (stopped["status"], stopped["pid"]) == ("stopped", 0)
    assert m4.state() == "crashed"
    assert shim.call(bundle, "delete", "--force", "lost").returncode == 0
    assert m4.state() == "offline"
    assert not (simulator.host.lib_firmware / "smarter-lost.elf").exists()
    assert not (shim.root / "smarter-hybrid" / "lost").exists()
    assert not is_locked(core_lock(simulator, 0))


def _read_all(fd: int) -> str:
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    return data.decode()


def test_without_a_log_file_the_container_output_is_the_console_alone(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    # podman gives no --log: like runc, the runtime writes nothing of its own to the
    # container's stdout or stderr, except why the container ended when it failed.
    shim.with_log = False
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    with pipe() as (out_read, out_write), pipe() as (err_read, err_write):
        assert shim.create(bundle, "quiet", stdout=out_write, stderr_fd=err_write).returncode == 0
        os.close(out_write)
        os.close(err_write)
        assert shim.call(bundle, "start", "quiet").returncode == 0
        assert read_lines(out_read, 2) == ["hello from cortex-m4 1", "hello from cortex-m4 2"]
        assert shim.call(bundle, "kill", "quiet", "TERM").returncode == 0
        assert shim.wait_exit("quiet") == 128 + signal.SIGTERM
        rest = _read_all(out_read).splitlines()
        assert all(re.fullmatch(r"hello from cortex-m4 \d+", line) for line in rest), rest
        assert _read_all(err_read) == ""
    assert shim.call(bundle, "delete", "quiet").returncode == 0
    assert not (bundle / "log.json").exists()


def test_without_a_log_file_a_crash_is_said_once_on_stderr(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    shim.with_log = False
    bundle = fw_bundle(make_bundle, firmware("crash", "cortex-m4", crash_after=1))
    with pipe() as (err_read, err_write):
        assert shim.create(bundle, "said", stderr_fd=err_write).returncode == 0
        os.close(err_write)
        assert shim.call(bundle, "start", "said").returncode == 0
        assert shim.wait_exit("said") == 1
        assert _read_all(err_read) == (
            "smarter-hybrid-runtime: remoteproc0 crashed running smarter-said.elf\n"
        )
    assert shim.call(bundle, "delete", "said").returncode == 0


def test_kill_decides_by_each_signals_default_action_and_refuses_what_runc_refuses(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    m4 = core(simulator, 0)
    assert shim.create(bundle, "sig").returncode == 0
    assert shim.call(bundle, "start", "sig").returncode == 0
    refusals = {
        "99": "unable to signal init: invalid argument",
        "FOO": 'unknown signal "FOO"',
        "STOP": "SIGSTOP would pause the container, and a remote core cannot be paused through"
        " remoteproc (stop the container with SIGTERM or SIGKILL)",
    }
    for argument, message in refusals.items():
        (bundle / "log.json").unlink(missing_ok=True)
        assert shim.call(bundle, "kill", "sig", argument).returncode == 1, argument
        assert log_messages(bundle / "log.json") == [message]
    for ignored in ("WINCH", "SIGCHLD", "urg", "CONT", "0"):
        assert shim.call(bundle, "kill", "sig", ignored).returncode == 0, ignored
    time.sleep(0.5)  # the supervisor polls its FIFO every 50 ms
    assert (m4.state(), shim.state(bundle, "sig")["status"]) == ("running", "running")

    assert shim.call(bundle, "kill", "sig", "USR1").returncode == 0
    assert shim.wait_exit("sig") == 128 + signal.SIGUSR1
    assert m4.state() == "offline"
    assert shim.call(bundle, "delete", "sig").returncode == 0


def test_delete_puts_back_the_recovery_the_core_had(
    shim: Shim, simulator: Simulator, make_bundle: MakeBundle
) -> None:
    m4 = core(simulator, 0)
    recovery = m4.sysfs / "recovery"
    recovery.write_text("enabled")
    bundle = fw_bundle(make_bundle, firmware("crash", "cortex-m4", crash_after=1))
    assert shim.create(bundle, "rec").returncode == 0
    assert shim.call(bundle, "start", "rec").returncode == 0
    assert shim.wait_exit("rec") == 1
    # While the container exists its crash stays visible: the kernel must not reboot it.
    assert (m4.state(), recovery.read_text().strip()) == ("crashed", "disabled")

    assert shim.call(bundle, "delete", "rec").returncode == 0
    assert (m4.state(), recovery.read_text().strip()) == ("offline", "enabled")
    assert not list(core_lock(simulator, 0).parent.glob("*.recovery"))
