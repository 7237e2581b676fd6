"""A gateway whose containerd dies with pods running still leaves nothing behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from sim.mounts import mounts_under
from smarter_common.procfs import command_line, pids_with, process_alive
from testbed.gateway import Gateway, GatewayConfig

from .conftest import WHOLE_GATEWAY

pytestmark = WHOLE_GATEWAY


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in pids_with(b"", text.encode()):
        words = b" ".join(command_line(pid) or [])[:120]
        found.append(f"{pid}: {words!r}")
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
    assert mounts_under(gateway.work) == []
    assert not Path("/run/netns", gateway.netns).exists()
    assert _processes_mentioning(work) == []
    assert _processes_in_cgroups_of(containers) == []
    cgroups = Path("/sys/fs/cgroup")
    assert [p for c in containers for p in cgroups.glob(f"**/k8s.io/{c}")] == []


def _processes_in_cgroups_of(container_ids: list[str]) -> list[str]:
    """Processes whose cgroup is one of these containers' (runc names them after the ID)."""
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cgroup = (entry / "cgroup").read_text()
            except OSError:
                continue
            if not process_alive(int(entry.name)):
                continue  # killed, not yet reaped by init
            found.extend(f"{entry.name} in {c}" for c in container_ids if c in cgroup)
    return found
