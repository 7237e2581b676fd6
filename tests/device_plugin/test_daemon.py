"""smarter-device-manager as a process, against the kubelet stand-in over real gRPC.

Each test builds a host root under /tmp with real device nodes and the remoteproc sysfs layout,
runs `python -m device_plugin --host-root ...` and plays kubelet.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from device_plugin.daemon import PERIODIC_S
from testbed.kubelet import Devices, Kubelet, start
from tests.device_plugin.conftest import (
    REPO,
    SOUND_MAJOR,
    Daemon,
    HostTree,
    daemon_command,
)

pytestmark = [pytest.mark.root]

RULES = """\
- devicematch: ^ttyUSB[0-9]*$
  nummaxdevices: 1
- devicematch: ^snd$
  nummaxdevices: 3
- devicematch: ^video[0-9]+$
  nummaxdevices: 2
"""
StartDaemon = Callable[..., Daemon]
WAIT_S = 10.0


def _health(devices: Devices) -> dict[str, str]:
    return {device.ID: device.health for device in devices}


def _all(health: str) -> Callable[[Devices], bool]:
    return lambda devices: bool(devices) and all(d.health == health for d in devices)


@pytest.fixture
def board(host: HostTree) -> HostTree:
    """A board's host tree (no daemon yet): a USB serial adapter, a sound card, a camera and one
    Cortex-M4 core."""
    host.node("ttyUSB0", minor=0)
    host.node("snd/controlC0", SOUND_MAJOR, 0)
    host.node("snd/pcmC0D0p", SOUND_MAJOR, 16)
    host.node("video0", 81, 0)
    host.node("null", 1, 3)
    host.core(0, "cortex-m4")
    host.node("ttyRPMSG0", 136, 0)
    host.write_rules(RULES)
    return host


EXPECTED = {
    "smarter-devices/ttyUSB0",
    "smarter-devices/snd",
    "smarter-devices/video0",
    "smarter-devices/rproc0",
}


def test_every_matching_device_and_core_is_registered(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    registered = kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    assert set(registered) == EXPECTED
    for resource, request in registered.items():
        assert request.version == "v1beta1"
        assert request.endpoint == f"smarter-{resource.split('/')[1]}.sock"
        assert request.options.get_preferred_allocation_available
        assert not request.options.pre_start_required
        assert (board.plugin_dir / request.endpoint).is_socket()
    assert kubelet.refused == []


def test_registration_is_answered_after_the_kubelet_got_the_plugin_options(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    for resource in EXPECTED:
        options = kubelet.options(resource)
        assert options.get_preferred_allocation_available
        assert not options.pre_start_required


def test_list_and_watch_offers_as_many_healthy_ids_as_the_rule_allows(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    shares = {
        resource: kubelet.wait_devices(resource, _all("Healthy"), timeout=WAIT_S)
        for resource in EXPECTED
    }
    assert {r: sorted(_health(d)) for r, d in shares.items()} == {
        "smarter-devices/ttyUSB0": ["ttyUSB0-0"],
        "smarter-devices/snd": ["snd-0", "snd-1", "snd-2"],
        "smarter-devices/video0": ["video0-0", "video0-1"],
        "smarter-devices/rproc0": ["remoteproc0"],
    }


def test_a_plugged_device_is_registered_and_a_removed_one_turns_unhealthy_then_recovers(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    kubelet.wait_devices("smarter-devices/ttyUSB0", _all("Healthy"), timeout=WAIT_S)

    board.node("ttyUSB1", minor=1)
    kubelet.wait_registered({"smarter-devices/ttyUSB1"}, timeout=WAIT_S)
    assert _health(
        kubelet.wait_devices("smarter-devices/ttyUSB1", _all("Healthy"), timeout=WAIT_S)
    ) == {"ttyUSB1-0": "Healthy"}

    (board.dev / "ttyUSB0").unlink()
    kubelet.wait_devices("smarter-devices/ttyUSB0", _all("Unhealthy"), timeout=WAIT_S)
    with pytest.raises(grpc.RpcError) as gone:
        kubelet.allocate("smarter-devices/ttyUSB0", ["ttyUSB0-0"])
    assert gone.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "smarter-devices/ttyUSB0: the device is gone from this node" in str(gone.value.details())

    board.node("ttyUSB0", minor=0)
    kubelet.wait_devices("smarter-devices/ttyUSB0", _all("Healthy"), timeout=WAIT_S)
    history = _drain(kubelet.updates("smarter-devices/ttyUSB0"))
    assert [_health(d) for d in history if d is not None] == [
        {"ttyUSB0-0": "Healthy"},
        {"ttyUSB0-0": "Unhealthy"},
        {"ttyUSB0-0": "Healthy"},
    ]


def test_shared_memory_churn_under_dev_does_not_wake_the_daemon(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    (board.dev / "shm").mkdir()
    daemon = start_daemon("--log-level", "debug")
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)

    before = _dev_rescans(daemon)
    for index in range(20):
        (board.dev / f"shm/segment{index}").write_text("x")
        (board.dev / f"shm/segment{index}").unlink()
        time.sleep(0.03)  # apart: each would be a rescan of its own if it were heard
    board.node("ttyUSB1", minor=1)
    kubelet.wait_registered({"smarter-devices/ttyUSB1"}, timeout=WAIT_S)
    assert _dev_rescans(daemon) - before == 1


def test_a_node_in_a_new_subdirectory_is_seen(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    board.write_rules(RULES + "- devicematch: ^bus/usb/[0-9]+/[0-9]+$\n  nummaxdevices: 1\n")
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    board.node("bus/usb/001/002", 189, 1)
    kubelet.wait_registered({"smarter-devices/bus_usb_001_002"}, timeout=WAIT_S)


def test_after_a_kubelet_restart_every_resource_is_served_and_registered_again(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    first = len(kubelet.registrations)

    kubelet.restart()
    registered = kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    # Every resource sent a Register to the new kubelet, not only to the old one.
    assert {r.resource_name for r in kubelet.registrations[first:]} >= EXPECTED
    for request in registered.values():
        assert (board.plugin_dir / request.endpoint).is_socket()
    kubelet.wait_devices("smarter-devices/snd", _all("Healthy"), timeout=WAIT_S)
    response = kubelet.allocate("smarter-devices/ttyUSB0", ["ttyUSB0-0"])
    assert [d.host_path for d in response.container_responses[0].devices] == ["/dev/ttyUSB0"]


def test_the_daemon_waits_for_the_kubelet_and_registers_when_it_starts(
    board: HostTree, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon()
    daemon.wait_log("waiting_for_kubelet")
    late = start(board.plugin_dir)
    try:
        late.wait_registered(EXPECTED, timeout=WAIT_S)
    finally:
        late.stop()


def test_changed_rules_are_applied_without_a_restart(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    snd_socket = board.plugin_dir / "smarter-snd.sock"
    assert snd_socket.is_socket()

    board.write_rules(
        "- devicematch: ^ttyUSB[0-9]*$\n  nummaxdevices: 4\n"
        "- devicematch: ^video[0-9]+$\n  nummaxdevices: 2\n"
        "- devicematch: ^null$\n  nummaxdevices: 1\n"
    )
    kubelet.wait_registered({"smarter-devices/null"}, timeout=WAIT_S)
    devices = kubelet.wait_devices(
        "smarter-devices/ttyUSB0", lambda ds: len(ds) == 4, timeout=WAIT_S
    )
    assert sorted(_health(devices)) == ["ttyUSB0-0", "ttyUSB0-1", "ttyUSB0-2", "ttyUSB0-3"]
    # The resource no rule wants any more is no longer served.
    snd = kubelet.updates("smarter-devices/snd")
    while snd.get(timeout=WAIT_S) is not None:  # until the stream ends
        pass
    assert not snd_socket.exists()


def test_broken_rules_are_reported_and_the_last_good_rules_kept(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)

    board.write_rules("- devicematch: ^ttyUSB[\n  nummaxdevices: 1\n")
    log = daemon.wait_log("rules_rejected")
    (event,) = [json.loads(line) for line in log.splitlines() if "rules_rejected" in line]
    assert event["level"] == "error"
    assert event["error"].startswith(
        f"{board.rules}: rule 1 (devicematch '^ttyUSB['): field 'devicematch' is not a valid "
        "RE2 regular expression: missing ]: ["
    )
    # The last good rules still decide: a new serial port is still a resource, snd still served.
    board.node("ttyUSB1", minor=1)
    kubelet.wait_registered({"smarter-devices/ttyUSB1"}, timeout=WAIT_S)
    assert (board.plugin_dir / "smarter-snd.sock").is_socket()
    assert daemon.process.poll() is None


def test_a_rule_re2_refuses_is_reported_and_the_last_good_rules_kept(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)

    # Python's re would take the lookahead and serve only the new rules' matches.
    board.write_rules(
        "- devicematch: ^video[0-9]+$\n  nummaxdevices: 1\n"
        "- devicematch: ^tty(?=USB)\n  nummaxdevices: 1\n"
    )
    daemon.wait_log("rules_rejected")
    (event,) = _events(daemon, "rules_rejected")
    assert event["error"] == (
        f"{board.rules}: rule 2 (devicematch '^tty(?=USB)'): field 'devicematch' is not a valid "
        "RE2 regular expression: invalid perl operator: (?= (devicematch is RE2 syntax, as the "
        "original's Go regexp reads it: no lookaround, backreferences or possessive quantifiers, "
        "'\\z' ends the text; https://github.com/google/re2/wiki/Syntax)"
    )
    board.node("ttyUSB1", minor=1)
    kubelet.wait_registered({"smarter-devices/ttyUSB1"}, timeout=WAIT_S)
    assert kubelet.devices("smarter-devices/snd") is not None
    assert len(kubelet.devices("smarter-devices/video0") or []) == 2  # still the old count
    assert daemon.process.poll() is None


def test_rules_in_the_originals_re2_dialect_are_served(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    board.write_rules(
        "- devicematch: ^ttyUSB[[:digit:]]+$\n  nummaxdevices: 1\n"
        "- devicematch: ^video\\pN\\z\n  nummaxdevices: 2\n"
    )
    start_daemon()
    wanted = {"smarter-devices/ttyUSB0", "smarter-devices/video0", "smarter-devices/rproc0"}
    assert set(kubelet.wait_registered(wanted, timeout=WAIT_S)) == wanted


def test_allocate_a_directory_rule_hands_over_every_node_below_it(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    response = kubelet.allocate("smarter-devices/snd", ["snd-1"])
    (container,) = response.container_responses
    assert [(d.container_path, d.host_path, d.permissions) for d in container.devices] == [
        ("/dev/snd/controlC0", "/dev/snd/controlC0", "rw"),
        ("/dev/snd/pcmC0D0p", "/dev/snd/pcmC0D0p", "rw"),
    ]
    assert dict(container.envs) == {}


def test_allocate_a_tty_gives_its_node_and_refuses_unknown_ids(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    connection = kubelet.connection("smarter-devices/ttyUSB0")
    response = connection.allocate(["ttyUSB0-0"], ["ttyUSB0-0"])
    assert [
        [(d.container_path, d.host_path, d.permissions) for d in c.devices]
        for c in response.container_responses
    ] == [[("/dev/ttyUSB0", "/dev/ttyUSB0", "rw")]] * 2
    with pytest.raises(grpc.RpcError) as refused:
        connection.allocate(["ttyUSB0-0", "ttyUSB9-0"])
    # The kubelet fails the pod's admission on any Allocate error and puts this text in the
    # pod's event ("Allocate failed due to rpc error: code = InvalidArgument desc = ...").
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        "smarter-devices/ttyUSB0: unknown device IDs ttyUSB9-0; this node advertises ttyUSB0-0. "
        "The kubelet chose from an older device list (changed rules?): recreate the pod"
    )
    (event,) = _events(daemon, "allocate_refused")
    assert (event["resource"], event["unknown"]) == ("smarter-devices/ttyUSB0", ["ttyUSB9-0"])


def test_allocate_a_core_names_it_in_the_env_and_gives_its_console(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    response = kubelet.allocate("smarter-devices/rproc0", ["remoteproc0"])
    (container,) = response.container_responses
    assert dict(container.envs) == {
        "SMARTER_RPROC": "remoteproc0",
        "SMARTER_RPROC_NAME": "cortex-m4",
    }
    assert [(d.container_path, d.host_path, d.permissions) for d in container.devices] == [
        ("/dev/ttyRPMSG0", "/dev/ttyRPMSG0", "rw")
    ]


def test_a_core_that_appears_later_is_registered(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    board.core(1, "cortex-m33")
    board.node("ttyRPMSG1", 136, 1)  # its console: a /dev event triggers the rescan
    kubelet.wait_registered({"smarter-devices/rproc1"}, timeout=WAIT_S)


def test_options_preferred_allocation_and_pre_start_answer_per_the_api(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    connection = kubelet.connect("smarter-snd.sock")
    try:
        options = connection.options()
        assert options.get_preferred_allocation_available
        assert not options.pre_start_required
        assert kubelet.preferred(
            "smarter-devices/snd", ["snd-2", "snd-0", "snd-1"], ["snd-2"], 2
        ) == ["snd-2", "snd-0"]
        connection.pre_start(["snd-0"])
    finally:
        connection.close()


def test_sigterm_removes_every_socket_and_exits_zero(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    watching = kubelet.updates("smarter-devices/snd")
    assert daemon.terminate() == 0
    assert sorted(p.name for p in board.plugin_dir.iterdir()) == ["kubelet.sock"]
    last: Devices | None = []
    while last is not None:
        last = watching.get(timeout=WAIT_S)  # the stream ended


def test_list_prints_resources_ids_and_paths_then_exits(board: HostTree) -> None:
    os.symlink("/proc/self/fd", board.dev / "fd")
    result = subprocess.run(
        [*daemon_command(board), "--list"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines == [
        ["RESOURCE", "IDS", "PATHS", "ENV"],
        ["smarter-devices/ttyUSB0", "ttyUSB0-0", "/dev/ttyUSB0", "-"],
        [
            "smarter-devices/snd",
            "snd-0..snd-2",
            "(3)",
            "/dev/snd/controlC0,/dev/snd/pcmC0D0p",
            "-",
        ],
        ["smarter-devices/video0", "video0-0,video0-1", "/dev/video0", "-"],
        [
            "smarter-devices/rproc0",
            "remoteproc0",
            "/dev/ttyRPMSG0",
            "SMARTER_RPROC=remoteproc0,SMARTER_RPROC_NAME=cortex-m4",
        ],
    ]
    assert list(board.plugin_dir.iterdir()) == []


def test_list_with_local_device_paths_shows_where_the_nodes_are_here(board: HostTree) -> None:
    result = subprocess.run(
        [*daemon_command(board), "--list", "--device-paths", "local"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["smarter-devices/ttyUSB0"][2] == f"/dev/ttyUSB0={board.dev}/ttyUSB0"


def test_a_core_that_vanishes_turns_unhealthy(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    kubelet.wait_devices("smarter-devices/rproc0", _all("Healthy"), timeout=WAIT_S)
    for entry in (board.root / "sys/class/remoteproc/remoteproc0").iterdir():
        entry.unlink()
    (board.root / "sys/class/remoteproc/remoteproc0").rmdir()
    (board.dev / "ttyRPMSG0").unlink()  # the /dev event makes the daemon look at once
    kubelet.wait_devices("smarter-devices/rproc0", _all("Unhealthy"), timeout=WAIT_S)


def test_broken_rules_at_start_exit_2_with_the_message_and_serve_nothing(
    board: HostTree,
) -> None:
    board.write_rules("- devicematch: ^tty$\n  nummaxdevices: 0\n")
    result = subprocess.run(
        daemon_command(board), cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"smarter-device-manager: {board.rules}: rule 1 (devicematch '^tty$'): field "
        "'nummaxdevices' is 0, must be between 1 and 1000 (1 makes the device exclusive to one "
        "container)\n"
    )
    assert list(board.plugin_dir.iterdir()) == []


def test_a_rule_re2_refuses_at_start_exits_2_naming_the_rule_and_re2s_reason_only(
    board: HostTree,
) -> None:
    board.write_rules(
        "- devicematch: ^snd$\n  nummaxdevices: 1\n- devicematch: ^(tty)\\1$\n  nummaxdevices: 1\n"
    )
    result = subprocess.run(
        daemon_command(board), cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    # One line: RE2's own logging of the refusal (absl, to stderr) is off.
    assert result.stderr == (
        f"smarter-device-manager: {board.rules}: rule 2 (devicematch '^(tty)\\\\1$'): field "
        "'devicematch' is not a valid RE2 regular expression: invalid escape sequence: \\1 "
        "(devicematch is RE2 syntax, as the original's Go regexp reads it: no lookaround, "
        "backreferences or possessive quantifiers, '\\z' ends the text; "
        "https://github.com/google/re2/wiki/Syntax)\n"
    )
    assert list(board.plugin_dir.iterdir()) == []


def test_with_a_host_root_the_daemon_still_registers_with_the_nodes_own_kubelet(
    board: HostTree,
) -> None:
    # The node's /var/lib is a tmpfs of a mount namespace of the test's own, holding the kubelet
    # stand-in: the daemon, given only SMARTER_HOST_ROOT, must find it there.
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount -t tmpfs smarter-test /var/lib && exec "$@"',
            "sh",
            sys.executable,
            "-m",
            "testbed.nodes_kubelet",
            str(board.root),
            str(board.rules),
            *EXPECTED,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == sorted(EXPECTED)
    assert list(board.plugin_dir.iterdir()) == []


def test_a_host_root_without_dev_is_refused(host: HostTree) -> None:
    host.write_rules(RULES)
    (host.root / "dev").rmdir()
    result = subprocess.run(
        daemon_command(host), cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"smarter-device-manager: {host.root}/dev is not a directory "
        "(--host-root must hold the host's /dev)\n"
    )
    assert list(host.plugin_dir.iterdir()) == []


def test_help_names_the_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "device_plugin", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    for flag in ("--host-root", "--rules", "--plugin-dir", "--list"):
        assert flag in result.stdout


def _drain(updates: queue.Queue[Devices | None]) -> list[Devices | None]:
    items = []
    while not updates.empty():
        items.append(updates.get_nowait())
    return items


def _events(daemon: Daemon, event: str) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for line in daemon.log_text().splitlines()
        if f'"{event}"' in line and json.loads(line).get("event") == event
    ]


def _dev_rescans(daemon: Daemon) -> int:
    return sum(1 for event in _events(daemon, "rescan") if "dev" in str(event["changes"]))


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.02)


def _registrations_of(kubelet: Kubelet, resource: str) -> int:
    return sum(1 for request in list(kubelet.registrations) if request.resource_name == resource)


def test_new_ptys_do_not_wake_the_daemon(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    board.node("pts/0", 136, 0)
    daemon = start_daemon("--log-level", "debug")
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    before = _dev_rescans(daemon)
    for index in range(1, 21):  # a terminal or `kubectl exec` session each
        board.node(f"pts/{index}", 136, index)
        time.sleep(0.03)
        (board.dev / f"pts/{index}").unlink()
    board.node("ttyUSB1", minor=1)
    kubelet.wait_registered({"smarter-devices/ttyUSB1"}, timeout=WAIT_S)
    assert _dev_rescans(daemon) - before == 1
    assert not any(r.resource_name.startswith("smarter-devices/pts") for r in kubelet.registrations)


def test_a_rule_that_names_pts_hears_and_serves_its_ptys(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    board.node("pts/0", 136, 0)
    board.write_rules(RULES + "- devicematch: ^pts/[0-9]+$\n  nummaxdevices: 1\n")
    start_daemon()
    kubelet.wait_registered(EXPECTED | {"smarter-devices/pts_0"}, timeout=WAIT_S)
    board.node("pts/1", 136, 1)
    kubelet.wait_registered({"smarter-devices/pts_1"}, timeout=WAIT_S)
    response = kubelet.allocate("smarter-devices/pts_1", ["pts_1-0"])
    assert [d.host_path for d in response.container_responses[0].devices] == ["/dev/pts/1"]


def test_a_symlink_out_of_dev_is_logged_with_the_rule_devicematch_and_not_advertised(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    os.symlink("/proc/self/fd", board.dev / "fd")
    board.write_rules(RULES + "- devicematch: ^fd$\n  nummaxdevices: 1\n")
    daemon = start_daemon()
    daemon.wait_log('"started"')
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    (event,) = _events(daemon, "device_rejected")
    assert {key: event[key] for key in ("level", "rule", "devicematch", "entry", "reason")} == {
        "level": "warning",
        "rule": 4,
        "devicematch": "^fd$",
        "entry": "/dev/fd",
        "reason": "symlink resolves outside /dev",
    }
    assert "smarter-devices/fd" not in {r.resource_name for r in kubelet.registrations}
    assert not (board.plugin_dir / "smarter-fd.sock").exists()


def test_a_rules_reload_keeps_an_unplugged_device_the_new_rules_still_match_as_unhealthy(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    kubelet.wait_devices("smarter-devices/ttyUSB0", _all("Healthy"), timeout=WAIT_S)
    (board.dev / "ttyUSB0").unlink()
    kubelet.wait_devices("smarter-devices/ttyUSB0", _all("Unhealthy"), timeout=WAIT_S)
    tty_usb = kubelet.updates("smarter-devices/ttyUSB0")
    _drain(tty_usb)
    snd = kubelet.updates("smarter-devices/snd")

    # ttyUSB* still matched, snd (present) no longer: only snd goes.
    board.write_rules(
        "- devicematch: ^ttyUSB[0-9]*$\n  nummaxdevices: 1\n"
        "- devicematch: ^null$\n  nummaxdevices: 1\n"
    )
    kubelet.wait_registered({"smarter-devices/null"}, timeout=WAIT_S)
    while snd.get(timeout=WAIT_S) is not None:  # its stream ends
        pass
    assert not (board.plugin_dir / "smarter-snd.sock").exists()
    assert (board.plugin_dir / "smarter-ttyUSB0.sock").is_socket()
    assert _drain(tty_usb) == []  # its stream is still open, nothing changed for it
    assert _health(kubelet.devices("smarter-devices/ttyUSB0") or []) == {"ttyUSB0-0": "Unhealthy"}

    board.node("ttyUSB0", minor=0)
    assert _health(
        kubelet.wait_devices("smarter-devices/ttyUSB0", _all("Healthy"), timeout=WAIT_S)
    ) == {"ttyUSB0-0": "Healthy"}


def test_a_rules_reload_drops_an_unplugged_device_no_rule_matches_any_more(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    (board.dev / "ttyUSB0").unlink()
    kubelet.wait_devices("smarter-devices/ttyUSB0", _all("Unhealthy"), timeout=WAIT_S)
    tty_usb = kubelet.updates("smarter-devices/ttyUSB0")
    board.write_rules("- devicematch: ^snd$\n  nummaxdevices: 3\n")
    while tty_usb.get(timeout=WAIT_S) is not None:
        pass
    assert not (board.plugin_dir / "smarter-ttyUSB0.sock").exists()
    assert (board.plugin_dir / "smarter-snd.sock").is_socket()


def test_a_deleted_plugin_socket_is_served_and_registered_again(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    kubelet.wait_devices("smarter-devices/video0", _all("Healthy"), timeout=WAIT_S)
    before = {resource: _registrations_of(kubelet, resource) for resource in EXPECTED}
    old = kubelet.connection("smarter-devices/video0")
    video = board.plugin_dir / "smarter-video0.sock"

    video.unlink()  # as a restarting kubelet does; kubelet.sock itself is left alone
    _wait_for(
        lambda: kubelet.connection("smarter-devices/video0") is not old,
        "new registration of smarter-devices/video0",
    )
    assert video.is_socket()
    assert _registrations_of(kubelet, "smarter-devices/video0") == (
        before["smarter-devices/video0"] + 1
    )
    kubelet.wait_devices("smarter-devices/video0", _all("Healthy"), timeout=WAIT_S)
    response = kubelet.allocate("smarter-devices/video0", ["video0-1"])
    assert [d.host_path for d in response.container_responses[0].devices] == ["/dev/video0"]
    others = EXPECTED - {"smarter-devices/video0"}
    assert {r: _registrations_of(kubelet, r) for r in others} == {r: before[r] for r in others}


class _LateListener:
    """A kubelet.sock that exists (bound) a while before it accepts (listen), then forwards each
    connection to the stand-in: the moment between a real kubelet's bind and listen, drawn out."""

    def __init__(self, path: Path, target: Path) -> None:
        self._target = target
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.bind(str(path))

    def listen(self) -> None:
        self._socket.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._socket.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(str(self._target))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_registration_retries_a_kubelet_socket_that_accepts_late_without_waiting_a_period(
    board: HostTree, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon()
    daemon.wait_log("waiting_for_kubelet")
    stand_in = start(board.plugin_dir, "stand-in.sock")
    listener = _LateListener(board.plugin_dir / "kubelet.sock", stand_in.socket)
    try:
        appeared = time.monotonic()
        time.sleep(0.5)  # the daemon heard kubelet.sock and dials it: refused until listen()
        listener.listen()
        stand_in.wait_registered(EXPECTED, timeout=WAIT_S)
        assert time.monotonic() - appeared < PERIODIC_S - 1
        assert _events(daemon, "register_failed") == []
    finally:
        listener.close()
        stand_in.stop()


def test_a_long_device_path_gets_device_ids_of_at_most_63_characters(
    board: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    path = "serial/by-id/usb-FTDI_FT232R_USB_UART_A10KZ9Q1-if00-port0-extra"
    resource = "smarter-devices/" + path.replace("/", "_")
    board.node(path, minor=7)
    board.write_rules(RULES + "- devicematch: ^serial/by-id/\n  nummaxdevices: 20\n")
    start_daemon()
    kubelet.wait_registered({resource}, timeout=WAIT_S)
    ids = sorted(_health(kubelet.wait_devices(resource, _all("Healthy"), timeout=WAIT_S)))
    assert len(ids) == 20
    assert max(len(device_id) for device_id in ids) <= 63
    response = kubelet.allocate(resource, ids[:1])
    assert [d.container_path for d in response.container_responses[0].devices] == [f"/dev/{path}"]
