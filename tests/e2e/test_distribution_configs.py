"""The gateway comes up from other distributions' containerd configs, through the installers.

Debian's packaged config is the default (tests/e2e/test_gateway.py); `containerd config default`
of containerd 1.6 and 1.7 must work the same way, and a config the installer refuses stops the
bring-up with the installer's own words and leaves nothing behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sim.mounts import mounts_under
from testbed.gateway import REPO, Gateway, GatewayConfig, GatewayError

from .conftest import WHOLE_GATEWAY

pytestmark = WHOLE_GATEWAY

FIXTURES = REPO / "tests" / "fixtures" / "containerd"


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root (network namespaces, containerd, FUSE)")


@pytest.mark.parametrize("config", ["containerd-1.6-default.toml", "containerd-1.7-default.toml"])
def test_pods_and_firmware_run_on_a_node_started_from_containerds_default_config(
    config: str,
) -> None:
    with Gateway(GatewayConfig(firmware=("hello",), containerd_config=FIXTURES / config)) as gw:
        plain = gw.run_busybox_pod("client-x8k2p")
        firmware = gw.run_firmware_pod(
            "blinky-4hx9q", "hello", gw.allocate("smarter-devices/rproc0")
        )
        assert plain.ip != firmware.ip
        deadline = time.monotonic() + 20
        while not any("hello from" in line for line in gw.container_log(firmware, "firmware")):
            assert time.monotonic() < deadline, "the firmware's console never reached the CRI log"
            time.sleep(0.2)
        gw.remove_every_pod()
        assert gw.leftovers() == []


def test_a_config_the_installer_refuses_stops_the_bring_up_with_its_reason() -> None:
    # Docker's containerd.io package disables the CRI plugin: no kubelet could use that node.
    gateway = Gateway(
        GatewayConfig(firmware=(), containerd_config=FIXTURES / "docker-containerd-io.toml")
    )
    try:
        with pytest.raises(GatewayError) as refused:
            gateway.start()
    finally:
        gateway.close()
    assert "install-containerd-config failed" in str(refused.value)
    assert "CRI plugin is disabled" in str(refused.value)
    assert not gateway.work.exists()
    assert not Path("/run/netns", gateway.netns).exists()
    assert mounts_under(gateway.work) == []
    assert gateway.qemu_pids() == []
