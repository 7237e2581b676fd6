"""A pod's Linux containers talk to its firmware over the firmware's RPMsg data channel, on the
simulated gateway, driven over CRI as the kubelet drives it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

from runtime_handler.route import PODS_DIRECTORY
from smarter_common.errors import SmarterError
from testbed.containerd import HYBRID_HANDLER
from testbed.gateway import Gateway, GatewayConfig
from testbed.images import BUSYBOX_IMAGE, firmware_image
from testbed.pods import Pod

RPROC0 = "smarter-devices/rproc0"
CHANNEL = "/dev/smarter/firmware/tty1"
# Sends two lines, prints each answer, then prints what else comes until the channel closes.
# (That the sidecar sees the channel close when the firmware stops is not asserted yet: with the
# simulator's channel withdrawn, the sidecar's read was still blocked 20 s later.)
TALK = (
    f"exec 3<>{CHANNEL}; "
    "for word in ping pong; do echo $word >&3; read -r answer <&3; echo \"$answer\"; done; "
    "while read -r answer <&3; do echo \"$answer\"; done; "
    "echo channel closed; exec sleep 600"
)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root (network namespaces, containerd, FUSE)")
    config = GatewayConfig(
        firmware=("echo", "hello"), keep_work_dir=bool(os.environ.get("SMARTER_E2E_KEEP"))
    )
    try:
        started = Gateway(config).__enter__()
    except SmarterError as error:
        pytest.fail(f"the gateway did not come up: {error}")
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def clean(gateway: Gateway) -> Iterator[Gateway]:
    try:
        yield gateway
    finally:
        gateway.remove_every_pod()


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _partitioned_pod(gateway: Gateway, name: str) -> Pod:
    pod = gateway.run_firmware_pod(name, "echo", gateway.allocate(RPROC0))
    gateway.start_container(
        pod,
        "shell",
        BUSYBOX_IMAGE,
        command=["sh", "-c", TALK],
        env={"SMARTER_DATA_CHANNELS": "1"},
    )
    return pod


def _pod_marks(gateway: Gateway) -> list[str]:
    marks = gateway.paths.firmware_records / PODS_DIRECTORY
    return sorted(os.listdir(marks)) if marks.is_dir() else []


def test_a_sidecar_writes_to_the_data_channel_and_reads_the_firmwares_answer(
    clean: Gateway,
) -> None:
    pod = _partitioned_pod(clean, "echo-7xk2p")
    _wait_for(
        lambda: clean.container_log(pod, "shell")[:2] == ["echo: ping", "echo: pong"],
        30,
        "the firmware's answers in the sidecar's log",
    )
    assert any("echo on cortex-m4: ping" in line for line in clean.container_log(pod, "firmware"))


def test_a_sidecar_of_a_pod_without_firmware_gets_nothing(clean: Gateway) -> None:
    firmware_pod = _partitioned_pod(clean, "echo-other")
    _wait_for(lambda: len(clean.container_log(firmware_pod, "shell")) >= 2, 30, "the answers")
    plain = clean.run_pod("plain-4hx9q", handler=HYBRID_HANDLER)
    clean.start_container(
        plain,
        "main",
        BUSYBOX_IMAGE,
        command=["sh", "-c", "ls /dev/smarter 2>&1; ls /dev | grep -c ttyRPMSG; exec sleep 600"],
    )
    _wait_for(lambda: len(clean.container_log(plain, "main")) >= 2, 20, "the listing")
    listing = clean.container_log(plain, "main")
    assert "No such file or directory" in listing[0]
    assert listing[1] == "0"


def test_a_sidecar_that_waits_for_a_channel_the_firmware_never_announces_is_refused(
    clean: Gateway,
) -> None:
    from testbed.cri.client import CriError

    pod = clean.run_firmware_pod("hello-3k9aa", "hello", clean.allocate(RPROC0))
    started = time.monotonic()
    with pytest.raises(CriError) as refused:
        clean.start_container(
            pod, "shell", BUSYBOX_IMAGE, command=["sh", "-c", TALK],
            env={"SMARTER_DATA_CHANNELS": "1"},
        )  # fmt: skip
    assert "firmware on remoteproc0 announced 0 of the 1 data channels" in str(refused.value)
    assert time.monotonic() - started < 30


def test_a_sidecar_of_a_console_only_firmware_starts_at_once_with_nothing(clean: Gateway) -> None:
    pod = clean.run_firmware_pod("hello-5mm2z", "hello", clean.allocate(RPROC0))
    started = time.monotonic()
    clean.start_container(
        pod, "main", BUSYBOX_IMAGE, command=["sh", "-c", "ls /dev/smarter 2>&1; exec sleep 600"]
    )
    assert time.monotonic() - started < 5
    _wait_for(lambda: len(clean.container_log(pod, "main")) >= 1, 20, "the listing")
    assert "No such file or directory" in clean.container_log(pod, "main")[0]


def test_firmware_restart_and_pod_deletion_leave_no_device_lock_or_process(
    clean: Gateway,
) -> None:
    pod = _partitioned_pod(clean, "echo-again")
    _wait_for(lambda: len(clean.container_log(pod, "shell")) >= 2, 30, "the answers")
    assert _pod_marks(clean) == [pod.id]
    assert clean.cri is not None
    # The kubelet restarts a firmware container as a new container in the same sandbox.
    clean.cri.stop_container(pod.containers["firmware"], timeout=5)
    clean.cri.remove_container(pod.containers["firmware"])
    del pod.containers["firmware"]
    restarted = clean.start_container(
        pod, "firmware", firmware_image("echo"), env=clean.allocate(RPROC0).env
    )
    clean.start_container(
        pod, "shell2", BUSYBOX_IMAGE, command=["sh", "-c", TALK],
        env={"SMARTER_DATA_CHANNELS": "1"},
    )  # fmt: skip
    _wait_for(
        lambda: clean.container_log(pod, "shell2")[:2] == ["echo: ping", "echo: pong"],
        30,
        "the restarted firmware's answers",
    )
    assert clean.firmware_records() == [restarted]
    clean.remove_pod(pod)
    assert _pod_marks(clean) == []
    assert clean.leftovers() == []
    # The core's console stays; its data channel went with the firmware.
    ttys = sorted(path.name for path in (clean.paths.sim_root / "dev").glob("ttyRPMSG*"))
    assert ttys == ["ttyRPMSG0"]
