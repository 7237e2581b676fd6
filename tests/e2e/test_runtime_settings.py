"""The runtime's host root, set where an operator may set it, never reaches smarter-cni.

containerd execs the CNI plugin and the runtime with its own environment. Here the operator
has put the runtime's SMARTER_RUNTIME_HOST_ROOT, and the shared SMARTER_HOST_ROOT, into
containerd's environment (a systemd drop-in) instead of the runtime's settings file. The CNI
plugin must keep its own host root (the node's directory, from its settings file): if it took
the simulator's root, it would look for the agent and the pods' network namespaces there and
every pod would fail with `cannot open <root>/...netns...`.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator

import pytest

from smarter_common.errors import SmarterError
from testbed.gateway import Gateway, GatewayConfig

from .conftest import WHOLE_GATEWAY

pytestmark = WHOLE_GATEWAY


@pytest.fixture(scope="module")
def gateway_set_by_environment() -> Iterator[Gateway]:
    """A gateway whose runtime takes its host root from containerd's environment."""
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root (network namespaces, containerd, FUSE)")
    config = GatewayConfig(firmware=("hello",), runtime_settings_in="environment")
    try:
        gateway = Gateway(config).__enter__()
    except SmarterError as error:
        pytest.fail(f"the gateway did not come up: {error}")
    try:
        yield gateway
    finally:
        gateway.close()


def test_pods_get_their_network_with_the_runtimes_host_root_in_containerds_environment(
    gateway_set_by_environment: Gateway,
) -> None:
    gateway = gateway_set_by_environment
    settings_file = gateway.runtime.with_name(gateway.runtime.name + ".conf")
    assert not settings_file.exists(), "this gateway's runtime must be set by the environment"
    plain = gateway.run_busybox_pod("client-x8k2p")
    firmware = gateway.run_firmware_pod(
        "blinky-4hx9q", "hello", gateway.allocate("smarter-devices/rproc0")
    )
    for pod in (plain, firmware):
        assert ipaddress.ip_address(pod.ip) in gateway.netconf.subnet, pod.name
    # The runtime did take the simulator's root from the environment: the firmware runs there.
    deadline = time.monotonic() + 20
    while not any("hello from" in line for line in gateway.container_log(firmware, "firmware")):
        assert time.monotonic() < deadline, "the firmware's console never reached the CRI log"
        time.sleep(0.2)
    assert gateway.core_states()["remoteproc0"] == "running"
    for pod in (plain, firmware):
        gateway.remove_pod(pod)
    assert gateway.leftovers() == []
