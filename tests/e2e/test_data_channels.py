"""A pod's Linux containers talk to its firmware over the firmware's RPMsg data channel, on the
simulated gateway, driven over CRI as the kubelet drives it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
import yaml

from runtime_handler.route import PODS_DIRECTORY
from smarter_common.errors import SmarterError
from smarter_common.remoteproc import core_by_id, core_channels
from testbed.containerd import HYBRID_HANDLER
from testbed.gateway import REPO, Gateway, GatewayConfig
from testbed.images import BUSYBOX_IMAGE, firmware_image
from testbed.pods import Pod

from .conftest import WHOLE_GATEWAY

pytestmark = WHOLE_GATEWAY

RPROC0 = "smarter-devices/rproc0"
RPROC1 = "smarter-devices/rproc1"
CHANNEL = "/dev/smarter/firmware/tty1"
CLOSED = "channel closed"


def _talk(*words: str) -> str:
    """A sidecar's script: send each word, print each answer, then print what else comes until
    the channel closes, and say so.

    The shell opens the channel as a session leader (runc makes every container's first process
    one), so the channel becomes its controlling terminal, and the kernel's hang-up when the
    firmware stops sends it SIGHUP. Under the kubelet the shell is PID 1 of its own PID
    namespace, where the kernel drops a signal left at its default action; in a pod that shares
    one PID namespace (shareProcessNamespace, and this test bed's CRI client today) SIGHUP would
    end the shell before it could say so. Ignoring it makes the close an end of file either way.
    """
    return (
        f"trap '' HUP; exec 3<>{CHANNEL}; "
        f"for word in {' '.join(words)}; do echo $word >&3; read -r answer <&3;"
        ' echo "$answer"; done; '
        'while read -r answer <&3; do echo "$answer"; done; '
        f"echo {CLOSED}; exec sleep 600"
    )


TALK = _talk("ping", "pong")


@pytest.fixture(scope="module")
def two_core_gateway() -> Iterator[Gateway]:
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root (network namespaces, containerd, FUSE)")
    config = GatewayConfig(
        firmware=("echo", "hello"),
        cores=2,
        keep_work_dir=bool(os.environ.get("SMARTER_E2E_KEEP")),
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
def clean(two_core_gateway: Gateway) -> Iterator[Gateway]:
    try:
        yield two_core_gateway
    finally:
        two_core_gateway.remove_every_pod()


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _partitioned_pod(
    two_core_gateway: Gateway, name: str, resource: str = RPROC0, talk: str = TALK
) -> Pod:
    pod = two_core_gateway.run_firmware_pod(name, "echo", two_core_gateway.allocate(resource))
    two_core_gateway.start_container(
        pod,
        "shell",
        BUSYBOX_IMAGE,
        command=["sh", "-c", talk],
        env={"SMARTER_DATA_CHANNELS": "1"},
    )
    return pod


def _pod_marks(two_core_gateway: Gateway) -> list[str]:
    marks = two_core_gateway.paths.firmware_records / PODS_DIRECTORY
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


def test_the_sidecar_sees_the_channel_close_when_the_firmware_stops(clean: Gateway) -> None:
    pod = _partitioned_pod(clean, "echo-stops")
    _wait_for(lambda: len(clean.container_log(pod, "shell")) >= 2, 30, "the answers")
    assert clean.cri is not None
    clean.cri.stop_container(pod.containers["firmware"], timeout=5)
    # The simulator hangs up the channel as it withdraws it; the sidecar's read ends at once.
    _wait_for(
        lambda: CLOSED in clean.container_log(pod, "shell"), 5, "the sidecar to see the close"
    )
    status = clean.cri.container_status(pod.containers["shell"])
    assert status.state == clean.cri.api.CONTAINER_RUNNING


def test_two_pods_with_firmware_on_two_cores_each_see_only_their_own_channel(
    clean: Gateway,
) -> None:
    first = _partitioned_pod(clean, "echo-first", RPROC0, _talk("alpha", "beta"))
    second = _partitioned_pod(clean, "echo-second", RPROC1, _talk("gamma", "delta"))
    _wait_for(
        lambda: (
            clean.container_log(first, "shell")[:2] == ["echo: alpha", "echo: beta"]
            and clean.container_log(second, "shell")[:2] == ["echo: gamma", "echo: delta"]
        ),
        30,
        "each pod's firmware answering its sidecar",
    )
    first_console = "\n".join(clean.container_log(first, "firmware"))
    second_console = "\n".join(clean.container_log(second, "firmware"))
    assert "alpha" in first_console and "gamma" not in first_console
    assert "gamma" in second_console and "alpha" not in second_console
    # Each sidecar holds one channel, the data channel its own pod's core announced.
    for pod, core_id in ((first, "remoteproc0"), (second, "remoteproc1")):
        core = core_by_id(clean.host, core_id)
        assert core is not None
        (channel,) = core_channels(clean.host, core).data
        host_node = os.stat(os.path.realpath(channel.node)).st_rdev
        assert clean.cri is not None
        code, out, err = clean.cri.exec_sync(
            pod.containers["shell"], ["sh", "-c", "ls -R /dev/smarter; stat -c %t:%T " + CHANNEL]
        )
        assert code == 0, err
        lines = out.split()
        assert lines[:-1] == ["/dev/smarter:", "firmware", "/dev/smarter/firmware:", "tty1"]
        assert lines[-1] == f"{os.major(host_node):x}:{os.minor(host_node):x}"


def test_the_example_partitioned_pod_runs_unchanged_and_its_sidecar_prints_the_answers(
    clean: Gateway,
) -> None:
    manifest = yaml.safe_load((REPO / "deploy" / "examples" / "partitioned-pod.yaml").read_text())
    pod = clean.run_manifest_pod(manifest)
    assert pod.spec.runtime_handler == HYBRID_HANDLER
    _wait_for(
        lambda: clean.container_log(pod, "shell")[:2] == ["echo: reading 1", "echo: reading 2"],
        30,
        "the example sidecar printing the firmware's answers",
    )
    assert clean.cri is not None
    clean.cri.stop_container(pod.containers["firmware"], timeout=5)
    status = clean.cri.wait_container_exited(pod.containers["shell"], timeout=10)
    assert status.exit_code == 0
    assert clean.container_log(pod, "shell")[-1] == CLOSED


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
    # The cores' consoles stay; the data channel went with the firmware.
    ttys = sorted(path.name for path in (clean.paths.sim_root / "dev").glob("ttyRPMSG*"))
    assert ttys == ["ttyRPMSG0", "ttyRPMSG1"]
