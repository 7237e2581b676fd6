"""A gateway whose containerd dies with pods running still leaves nothing behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from testbed.gateway import Gateway, GatewayConfig

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline:
                words = cmdline.replace(b"\0", b" ")[:120]
                found.append(f"{entry.name}: {words!r}")
    return found


def test_teardown_after_containerd_is_killed_leaves_nothing() -> None:
    gateway = Gateway(GatewayConfig(firmware=("hello",)))
    try:
        gateway.start()
        gateway.run_busybox_pod("client-x8k2p")
        gateway.run_firmware_pod(
            "blinky-4hx9q", "hello", gateway.allocate("smarter-devices/rproc0")
        )
        assert gateway.qemu_pids(), "the firmware is not running: nothing to clean up"
        containers = gateway.runc_containers() + gateway.firmware_records()
        assert len(containers) == 4  # two sandboxes, busybox, firmware
        containerd = gateway.processes.find("containerd")
        assert containerd is not None
        os.kill(containerd.pid, signal.SIGKILL)
        containerd.process.wait()
    finally:
        gateway.close()
    work = str(gateway.work)
    assert not gateway.work.exists()
    assert work not in Path("/proc/self/mountinfo").read_text()
    assert not Path("/run/netns", gateway.netns).exists()
    assert _processes_mentioning(work) == []
    assert _processes_in_cgroups_of(containers) == []
    cgroups = Path("/sys/fs/cgroup")
    assert [p for c in containers for p in cgroups.glob(f"**/k8s.io/{c}")] == []


def _processes_in_cgroups_of(container_ids: list[str]) -> list[str]:
    """Processes whose cgroup is one of these containers' (runc names them after the ID)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cgroup = (entry / "cgroup").read_text()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state == "Z":
                continue  # killed, not yet reaped by init
            found.extend(f"{entry.name} in {c}" for c in container_ids if c in cgroup)
    return found
