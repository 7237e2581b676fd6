"""smarter-device-manager as a process, against the kubelet stand-in over real gRPC.

Each test builds a host root under /tmp with real device nodes and the remoteproc sysfs layout,
runs `python -m device_plugin --host-root ...` and plays kubelet.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import Callable

import grpc
import pytest

from demo.kubelet import Devices, Kubelet, start
from tests.device_plugin.conftest import (
    REPO,
    SOUND_MAJOR,
    Daemon,
    HostTree,
    daemon_command,
)

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
def gateway(host: HostTree) -> HostTree:
    """A gateway with a USB serial adapter, a sound card and a camera, and one Cortex-M4 core."""
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
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    registered = kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    assert set(registered) == EXPECTED
    for resource, request in registered.items():
        assert request.version == "v1beta1"
        assert request.endpoint == f"smarter-{resource.split('/')[1]}.sock"
        assert request.options.get_preferred_allocation_available
        assert not request.options.pre_start_required
        assert (gateway.plugin_dir / request.endpoint).is_socket()
    assert kubelet.refused == []


def test_list_and_watch_offers_as_many_healthy_ids_as_the_rule_allows(
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
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
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    kubelet.wait_devices("smarter-devices/ttyUSB0", _all("Healthy"), timeout=WAIT_S)

    gateway.node("ttyUSB1", minor=1)
    kubelet.wait_registered({"smarter-devices/ttyUSB1"}, timeout=WAIT_S)
    assert _health(
        kubelet.wait_devices("smarter-devices/ttyUSB1", _all("Healthy"), timeout=WAIT_S)
    ) == {"ttyUSB1-0": "Healthy"}

    (gateway.dev / "ttyUSB0").unlink()
    kubelet.wait_devices("smarter-devices/ttyUSB0", _all("Unhealthy"), timeout=WAIT_S)
    with pytest.raises(grpc.RpcError) as gone:
        kubelet.allocate("smarter-devices/ttyUSB0", ["ttyUSB0-0"])
    assert gone.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "smarter-devices/ttyUSB0: the device is gone from this node" in str(gone.value.details())

    gateway.node("ttyUSB0", minor=0)
    kubelet.wait_devices("smarter-devices/ttyUSB0", _all("Healthy"), timeout=WAIT_S)
    history = _drain(kubelet.updates("smarter-devices/ttyUSB0"))
    assert [_health(d) for d in history if d is not None] == [
        {"ttyUSB0-0": "Healthy"},
        {"ttyUSB0-0": "Unhealthy"},
        {"ttyUSB0-0": "Healthy"},
    ]


def test_shared_memory_churn_under_dev_does_not_wake_the_daemon(
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    (gateway.dev / "shm").mkdir()
    daemon = start_daemon("--log-level", "debug")
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)

    def dev_rescans() -> int:
        return sum(
            1
            for line in daemon.log_text().splitlines()
            if '"rescan"' in line and "dev" in json.loads(line)["changes"]
        )

    before = dev_rescans()
    for index in range(20):
        (gateway.dev / f"shm/segment{index}").write_text("x")
        (gateway.dev / f"shm/segment{index}").unlink()
        time.sleep(0.03)  # apart: each would be a rescan of its own if it were heard
    gateway.node("ttyUSB1", minor=1)
    kubelet.wait_registered({"smarter-devices/ttyUSB1"}, timeout=WAIT_S)
    assert dev_rescans() - before == 1


def test_a_node_in_a_new_subdirectory_is_seen(
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    gateway.write_rules(RULES + "- devicematch: ^bus/usb/[0-9]+/[0-9]+$\n  nummaxdevices: 1\n")
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    gateway.node("bus/usb/001/002", 189, 1)
    kubelet.wait_registered({"smarter-devices/bus_usb_001_002"}, timeout=WAIT_S)


def test_after_a_kubelet_restart_every_resource_is_served_and_registered_again(
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    first = len(kubelet.registrations)

    kubelet.restart()
    assert kubelet.registered() == {}
    registered = kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    assert len(kubelet.registrations) >= first + len(EXPECTED)
    for request in registered.values():
        assert (gateway.plugin_dir / request.endpoint).is_socket()
    kubelet.wait_devices("smarter-devices/snd", _all("Healthy"), timeout=WAIT_S)
    response = kubelet.allocate("smarter-devices/ttyUSB0", ["ttyUSB0-0"])
    assert [d.host_path for d in response.container_responses[0].devices] == ["/dev/ttyUSB0"]


def test_the_daemon_waits_for_the_kubelet_and_registers_when_it_starts(
    gateway: HostTree, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon()
    daemon.wait_log("waiting_for_kubelet")
    late = start(gateway.plugin_dir)
    try:
        late.wait_registered(EXPECTED, timeout=WAIT_S)
    finally:
        late.stop()


def test_changed_rules_are_applied_without_a_restart(
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    snd_socket = gateway.plugin_dir / "smarter-snd.sock"
    assert snd_socket.is_socket()

    gateway.write_rules(
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
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)

    gateway.write_rules("- devicematch: ^ttyUSB[\n  nummaxdevices: 1\n")
    log = daemon.wait_log("rules_rejected")
    (event,) = [json.loads(line) for line in log.splitlines() if "rules_rejected" in line]
    assert event["level"] == "error"
    assert event["error"].startswith(
        f"{gateway.rules}: rule 1 (devicematch '^ttyUSB['): field 'devicematch' is not a valid "
        "regular expression"
    )
    # The last good rules still decide: a new serial port is still a resource, snd still served.
    gateway.node("ttyUSB1", minor=1)
    kubelet.wait_registered({"smarter-devices/ttyUSB1"}, timeout=WAIT_S)
    assert (gateway.plugin_dir / "smarter-snd.sock").is_socket()
    assert daemon.process.poll() is None


def test_allocate_a_directory_rule_hands_over_every_node_below_it(
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
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
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    connection = kubelet.connection("smarter-devices/ttyUSB0")
    response = connection.allocate(["ttyUSB0-0"], ["ttyUSB0-0"])
    assert [
        [(d.container_path, d.host_path, d.permissions) for d in c.devices]
        for c in response.container_responses
    ] == [[("/dev/ttyUSB0", "/dev/ttyUSB0", "rw")]] * 2
    with pytest.raises(grpc.RpcError) as refused:
        connection.allocate(["ttyUSB0-0", "ttyUSB9-0"])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "smarter-devices/ttyUSB0: unknown device IDs ttyUSB9-0"


def test_allocate_a_core_names_it_in_the_env_and_gives_its_console(
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
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
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    gateway.core(1, "cortex-m33")
    gateway.node("ttyRPMSG1", 136, 1)  # its console: a /dev event triggers the rescan
    kubelet.wait_registered({"smarter-devices/rproc1"}, timeout=WAIT_S)


def test_options_preferred_allocation_and_pre_start_answer_per_the_api(
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
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
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    watching = kubelet.updates("smarter-devices/snd")
    assert daemon.terminate() == 0
    assert sorted(p.name for p in gateway.plugin_dir.iterdir()) == ["kubelet.sock"]
    last: Devices | None = []
    while last is not None:
        last = watching.get(timeout=WAIT_S)  # the stream ended


def test_list_prints_resources_ids_and_paths_then_exits(gateway: HostTree) -> None:
    os.symlink("/proc/self/fd", gateway.dev / "fd")
    result = subprocess.run(
        [*daemon_command(gateway), "--list"], cwd=REPO, capture_output=True, text=True, timeout=30
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
    assert list(gateway.plugin_dir.iterdir()) == []


def test_list_with_local_device_paths_shows_where_the_nodes_are_here(gateway: HostTree) -> None:
    result = subprocess.run(
        [*daemon_command(gateway), "--list", "--device-paths", "local"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["smarter-devices/ttyUSB0"][2] == f"/dev/ttyUSB0={gateway.dev}/ttyUSB0"


def test_a_core_that_vanishes_turns_unhealthy(
    gateway: HostTree, kubelet: Kubelet, start_daemon: StartDaemon
) -> None:
    start_daemon()
    kubelet.wait_registered(EXPECTED, timeout=WAIT_S)
    kubelet.wait_devices("smarter-devices/rproc0", _all("Healthy"), timeout=WAIT_S)
    for entry in (gateway.root / "sys/class/remoteproc/remoteproc0").iterdir():
        entry.unlink()
    (gateway.root / "sys/class/remoteproc/remoteproc0").rmdir()
    (gateway.dev / "ttyRPMSG0").unlink()  # the /dev event makes the daemon look at once
    kubelet.wait_devices("smarter-devices/rproc0", _all("Unhealthy"), timeout=WAIT_S)


def test_broken_rules_at_start_exit_2_with_the_message_and_serve_nothing(
    gateway: HostTree,
) -> None:
    gateway.write_rules("- devicematch: ^tty$\n  nummaxdevices: 0\n")
    result = subprocess.run(
        daemon_command(gateway), cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"smarter-device-manager: {gateway.rules}: rule 1 (devicematch '^tty$'): field "
        "'nummaxdevices' is 0, must be between 1 and 1000 (1 makes the device exclusive to one "
        "container)\n"
    )
    assert list(gateway.plugin_dir.iterdir()) == []


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
