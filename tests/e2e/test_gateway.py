"""A whole gateway: containerd (CRI) drives smarter-cni, the hybrid runtime and the device manager.

The test acts as the kubelet: RunPodSandbox, CreateContainer with the device manager's
Allocate response, ExecSync, StopContainer, RemovePodSandbox, against our own containerd in a
node network namespace, running the host-side programs on their own bundled interpreter.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time

import pytest
import yaml

from runtime_handler.bundle import BOARD_ANNOTATIONS
from testbed.cri.client import CriError
from testbed.gateway import PRODUCTION_CONFLIST, REPO, Allocation, Gateway, Pod
from testbed.images import BUSYBOX_IMAGE

from .conftest import WHOLE_GATEWAY

pytestmark = WHOLE_GATEWAY

RPROC0 = "smarter-devices/rproc0"
EXAMPLES = REPO / "deploy" / "examples"


def _wait_for(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def _exec(gateway: Gateway, pod: Pod, *command: str) -> tuple[int, str, str]:
    assert gateway.cri is not None
    return gateway.cri.exec_sync(pod.containers["main"], list(command))


def test_pods_on_the_default_runtime_get_addresses_from_smarter_cni(
    clean_gateway: Gateway,
) -> None:
    gateway = clean_gateway
    a = gateway.run_busybox_pod("client-x8k2p")
    b = gateway.run_busybox_pod("sensor-7xk2p")
    subnet = gateway.netconf.subnet
    assert ipaddress.ip_address(a.ip) in subnet
    assert ipaddress.ip_address(b.ip) in subnet
    assert a.ip != b.ip
    assert ipaddress.ip_address(gateway.dns_server) in subnet
    # The exec'd plugin handed both ADDs to the agent (its fast path), not doing them itself.
    agent_log = gateway.log_of("smarter-cni-agent")
    assert f"{a.ip}/" in agent_log
    assert f"{b.ip}/" in agent_log
    code, out, err = _exec(gateway, a, "ip", "-4", "-o", "addr", "show", "eth0")
    assert code == 0, err
    assert f"inet {a.ip}/" in out
    code, out, err = _exec(gateway, a, "ping", "-c", "1", "-W", "5", b.ip)
    assert code == 0, out + err


def test_a_pod_finds_another_by_pod_name_and_by_app_name(clean_gateway: Gateway) -> None:
    gateway = clean_gateway
    a = gateway.run_busybox_pod("client-x8k2p")
    b = gateway.run_busybox_pod("sensor-7xk2p")
    for name in ("sensor-7xk2p", "sensor"):
        code, out, err = _exec(gateway, a, "nslookup", name)
        assert code == 0, f"nslookup {name}: {out} {err}"
        assert b.ip in out, f"nslookup {name} did not answer {b.ip}: {out}"
    code, out, err = _exec(gateway, a, "ping", "-c", "1", "-W", "5", "sensor")
    assert code == 0, out + err
    assert b.ip in out


def test_a_name_nobody_has_is_not_found(clean_gateway: Gateway) -> None:
    gateway = clean_gateway
    a = gateway.run_busybox_pod("client-x8k2p")
    code, out, _ = _exec(gateway, a, "nslookup", "no-such-pod")
    assert code != 0, out


def test_device_manager_advertises_the_simulated_core_and_allocates_it(
    simulated_gateway: Gateway,
) -> None:
    gateway = simulated_gateway
    resources = gateway.resources()
    assert resources.get(RPROC0), f"{RPROC0} is not advertised: {resources}"
    allocation = gateway.allocate(RPROC0)
    assert allocation.env.get("SMARTER_RPROC") == "remoteproc0"


def test_a_serial_port_from_the_device_manager_appears_in_the_pod(clean_gateway: Gateway) -> None:
    gateway = clean_gateway
    allocation = gateway.allocate("smarter-devices/ttyUSB0")
    pod = gateway.run_busybox_pod("serial-3kq8v", allocation)
    code, out, err = _exec(gateway, pod, "ls", "-l", "/dev/ttyUSB0")
    assert code == 0, err
    # The simulated gateway's ttyUSB0 is a real character device node, 188:0.
    assert out.startswith("c"), out
    assert "188,   0" in out, out


def test_firmware_pod_runs_on_the_core_and_its_console_reaches_the_cri_log(
    clean_gateway: Gateway,
) -> None:
    gateway = clean_gateway
    assert gateway.cri is not None
    allocation = gateway.allocate(RPROC0)
    pod = gateway.run_firmware_pod("blinky-4hx9q", "hello", allocation)
    # The sandbox is an ordinary container, handed to runc.
    runc = subprocess.run(
        ["runc", "--root", str(gateway.layout.runc_root / "k8s.io"), "state", pod.id],
        capture_output=True,
        text=True,
    )
    assert runc.returncode == 0, runc.stderr
    assert '"status": "running"' in runc.stdout
    assert gateway.core_states()["remoteproc0"] == "running"
    # The firmware's supervisor is the installed runtime, run by the bundle's own python3.
    interpreters = set(gateway.runtime_executables().values())
    assert interpreters, "no process of the installed runtime supervises the firmware"
    assert interpreters == {"/opt/smarter-edge/bin/python3"}
    _wait_for(
        lambda: any("hello from" in line for line in gateway.container_log(pod, "firmware")),
        20,
        "the firmware's console in the CRI log",
    )
    container = pod.containers["firmware"]
    assert gateway.cri.container_status(container).state == gateway.cri.api.CONTAINER_RUNNING
    gateway.cri.stop_container(container, timeout=5)
    status = gateway.cri.container_status(container)
    assert status.state == gateway.cri.api.CONTAINER_EXITED
    assert gateway.core_states()["remoteproc0"] == "offline"
    assert gateway.qemu_pids() == []


def test_each_container_has_its_own_pid_namespace_as_the_kubelet_gives_it(
    clean_gateway: Gateway,
) -> None:
    # Without shareProcessNamespace the kubelet asks for a PID namespace per container: its
    # first process is PID 1 (which, e.g., drops a data channel's hang-up SIGHUP).
    gateway = clean_gateway
    pod = gateway.run_pod("pid-ns")
    gateway.start_container(
        pod, "main", BUSYBOX_IMAGE, command=["sh", "-c", "echo pid $$; exec sleep 600"]
    )
    _wait_for(lambda: "pid 1" in gateway.container_log(pod, "main"), 20, "the container's PID")
    gateway.remove_pod(pod)


def test_firmware_pod_naming_this_board_runs_its_sandbox_and_sidecar_under_runc(
    clean_gateway: Gateway,
) -> None:
    # containerd copies the pod's annotations to every container: sandbox, sidecar, firmware.
    gateway = clean_gateway
    assert gateway.cri is not None
    board = {BOARD_ANNOTATIONS[0]: "smarter-edge,sim"}
    pod = gateway.run_firmware_pod(
        "blinky-b0ard", "hello", gateway.allocate(RPROC0), annotations=board
    )
    sidecar = gateway.start_container(
        pod, "main", BUSYBOX_IMAGE, command=["sh", "-c", "exec sleep 600"]
    )
    assert gateway.cri.container_status(sidecar).state == gateway.cri.api.CONTAINER_RUNNING
    assert sorted(gateway.runc_containers()) == sorted([pod.id, sidecar])
    _wait_for(
        lambda: any("hello from" in line for line in gateway.container_log(pod, "firmware")),
        20,
        "the firmware's console in the CRI log",
    )
    gateway.remove_pod(pod)
    assert gateway.leftovers() == []


def test_firmware_pod_for_another_board_is_refused_naming_both(clean_gateway: Gateway) -> None:
    gateway = clean_gateway
    with pytest.raises(CriError) as refused:
        gateway.run_firmware_pod(
            "blinky-0ther",
            "hello",
            gateway.allocate(RPROC0),
            annotations={BOARD_ANNOTATIONS[0]: "imx8mm-evk"},
        )
    assert (
        "firmware is for board 'imx8mm-evk', but this board is 'smarter-edge simulated gateway'"
        in refused.value.details
    )
    assert gateway.core_states()["remoteproc0"] == "offline"
    for pod in list(gateway.pods.values()):
        gateway.remove_pod(pod)
    assert gateway.leftovers() == []


def test_crashing_firmware_is_reported_exited_non_zero(clean_gateway: Gateway) -> None:
    gateway = clean_gateway
    assert gateway.cri is not None
    pod = gateway.run_firmware_pod("crasher-2kd8w", "crash", gateway.allocate(RPROC0))
    status = gateway.cri.wait_container_exited(pod.containers["firmware"], timeout=30)
    assert status.exit_code != 0
    assert any("crashing now" in line for line in gateway.container_log(pod, "firmware"))


def test_second_firmware_pod_for_a_busy_core_is_refused(clean_gateway: Gateway) -> None:
    gateway = clean_gateway
    assert gateway.cri is not None
    allocation = gateway.allocate(RPROC0)
    first = gateway.run_firmware_pod("blinky-4hx9q", "hello", allocation)
    with pytest.raises(CriError) as refused:
        gateway.run_firmware_pod("blinky-9zz7m", "hello", allocation)
    assert "remoteproc0 is reserved by another container" in refused.value.details
    second = next(p for p in gateway.pods.values() if p.name == "blinky-9zz7m")
    gateway.remove_pod(second)
    # Nothing of the refused pod is left, and the first pod's firmware is untouched.
    first_status = gateway.cri.container_status(first.containers["firmware"])
    assert first_status.state == gateway.cri.api.CONTAINER_RUNNING
    assert gateway.core_states()["remoteproc0"] == "running"
    assert gateway.leases() == [first.ip]
    assert gateway.dns_records() == [first.id]
    assert gateway.firmware_records() == [first.containers["firmware"]]
    placed = [path.name for path in gateway.firmware_copies()]
    assert placed == [f"smarter-{first.containers['firmware']}.elf"]
    assert sorted(gateway.runc_containers()) == [first.id]


def test_firmware_pod_for_a_core_that_does_not_exist_is_refused(clean_gateway: Gateway) -> None:
    gateway = clean_gateway
    nowhere = Allocation(RPROC0, ("remoteproc9",), {"SMARTER_RPROC": "remoteproc9"}, ())
    with pytest.raises(CriError) as refused:
        gateway.run_firmware_pod("blinky-4hx9q", "hello", nowhere)
    assert (
        "SMARTER_RPROC=remoteproc9 names a core that does not exist;"
        " this host's cores: remoteproc0" in refused.value.details
    )
    for pod in list(gateway.pods.values()):
        gateway.remove_pod(pod)
    assert gateway.leftovers() == []


def test_removing_every_pod_leaves_nothing_behind(clean_gateway: Gateway) -> None:
    gateway = clean_gateway
    pods = [
        gateway.run_busybox_pod("client-x8k2p"),
        gateway.run_busybox_pod("sensor-7xk2p"),
        gateway.run_firmware_pod("blinky-4hx9q", "hello", gateway.allocate(RPROC0)),
    ]
    assert gateway.leftovers() != [], "pods running but nothing to see: the check is blind"
    for pod in pods:
        gateway.remove_pod(pod)
    assert gateway.leftovers() == []


def test_the_node_is_installed_by_the_installers_over_the_distributions_own_config(
    simulated_gateway: Gateway,
) -> None:
    gateway = simulated_gateway
    from smarter_common import containerd

    node = gateway.node
    distribution = gateway.config.containerd_config.read_text()
    # The runtime's installer kept the distribution's file, once, beside the one it changed.
    backup = node.path("/etc/containerd/config.toml.smarter-edge.orig")
    assert backup.read_text() == distribution
    # smarter-cni's installer put the plugin and the conflist where that config looks.
    assert (node.path("/usr/lib/cni/smarter-cni")).read_bytes() == (
        gateway.bundle / "smarter-cni"
    ).read_bytes()
    assert gateway.conflist_path == node.path("/etc/cni/net.d/10-smarter.conflist")
    assert gateway.conflist_path.read_bytes() == PRODUCTION_CONFLIST.read_bytes()
    # containerd runs the installed runtime, which reads its own settings file beside it.
    document = containerd.parse_config(gateway.layout.config.read_text(), source="config")
    runtimes = containerd.lookup(
        document, (*containerd.cri_runtime_plugin(2), "containerd", "runtimes")
    )
    assert runtimes["hybrid"]["options"]["BinaryName"] == str(gateway.runtime)
    assert runtimes["hybrid"]["runtime_type"] == "io.containerd.runc.v2"
    settings = gateway.runtime.with_name(gateway.runtime.name + ".conf").read_text()
    assert f"SMARTER_RUNTIME_HOST_ROOT={gateway.sim_root}\n" in settings
    assert "SMARTER_HOST_ROOT" not in gateway.log_of("containerd")


def _example(name: str) -> dict:  # type: ignore[type-arg]
    manifest = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(manifest, dict)
    return manifest


def test_the_example_firmware_pod_runs_unchanged_and_kubectl_logs_would_show_the_console(
    clean_gateway: Gateway,
) -> None:
    gateway = clean_gateway
    pod = gateway.run_manifest_pod(_example("firmware-pod.yaml"))
    assert pod.spec.runtime_handler == "hybrid"
    _wait_for(
        lambda: any(
            "hello from cortex-m4" in line for line in gateway.container_log(pod, "firmware")
        ),
        20,
        "the example firmware's console in the CRI log (what `kubectl logs` reads)",
    )
    assert gateway.core_states()["remoteproc0"] == "running"


def test_the_example_serial_pod_runs_unchanged_and_says_no_adapter_answers(
    clean_gateway: Gateway,
) -> None:
    gateway = clean_gateway
    pod = gateway.run_manifest_pod(_example("serial-pod.yaml"))
    _wait_for(
        lambda: any("no adapter answers" in line for line in gateway.container_log(pod, "reader")),
        20,
        "the serial example's word that the simulated adapter is silent",
    )
    assert gateway.cri is not None
    status = gateway.cri.container_status(pod.containers["reader"])
    assert status.state == gateway.cri.api.CONTAINER_RUNNING
