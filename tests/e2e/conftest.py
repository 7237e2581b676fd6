"""One simulated gateway per test module, driven over CRI as the kubelet would."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from smarter_common.errors import SmarterError
from testbed.gateway import Gateway, GatewayConfig

# What a module of tests on the whole simulated gateway needs from the machine (tests/conftest.py
# skips, or in CI fails, a test without it): `pytestmark = WHOLE_GATEWAY`.
WHOLE_GATEWAY = [
    pytest.mark.netns,
    pytest.mark.containerd,
    pytest.mark.fuse,
    pytest.mark.qemu,
    pytest.mark.dnsmasq,
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def simulated_gateway() -> Iterator[Gateway]:
    """The module's whole simulated gateway (containerd, the three programs, the simulator)."""
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root (network namespaces, containerd, FUSE)")
    config = GatewayConfig(keep_work_dir=bool(os.environ.get("SMARTER_E2E_KEEP")))
    try:
        gateway = Gateway(config).__enter__()
    except SmarterError as error:
        pytest.fail(f"the gateway did not come up: {error}")
    try:
        yield gateway
    finally:
        gateway.close()


@pytest.fixture
def clean_gateway(simulated_gateway: Gateway) -> Iterator[Gateway]:
    """The module's gateway; every pod a test made is removed after it, whatever happened."""
    try:
        yield simulated_gateway
    finally:
        simulated_gateway.remove_every_pod()
