"""On the simulated gateway, containerd finds no python3: what it executes runs on the bundle.

The test bed installs the bundle with the installers (testbed.bringup) and starts containerd in
a mount namespace where every python3 of the machine is hidden (testbed.hidden_python); the CNI
plugin, the runtime's pass-through and a firmware container's supervisor all run there.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sim.mounts import mount_points
from smarter_common.deadline import wait_until
from smarter_common.procfs import command_line
from testbed.gateway import REPO, Gateway
from testbed.hidden_python import PREFIX, pythons

from .conftest import WHOLE_GATEWAY

pytestmark = WHOLE_GATEWAY

BUNDLED_PYTHON = str(PREFIX / "bin/python3")


def _containerd_pid(gateway: Gateway) -> int:
    started = gateway.processes.find("containerd")
    assert started is not None, "containerd is not running"
    return started.pid


def _in_mounts_of(pid: int, script: str) -> subprocess.CompletedProcess[str]:
    """`script` (sh) in the mount namespace of process `pid`, with containerd's PATH."""
    return subprocess.run(
        ["nsenter", f"--target={pid}", "--mount", "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def test_no_python3_is_reachable_from_containerd_but_the_bundled_one(
    simulated_gateway: Gateway,
) -> None:
    pid = _containerd_pid(simulated_gateway)
    venv_python = REPO / ".venv/bin/python"
    for python in ("python3", "python3.11", "/usr/bin/python3", str(venv_python)):
        found = _in_mounts_of(pid, f"{python} -c 'print(1)'")
        assert found.returncode != 0 and found.stdout == "", f"{python} runs: {found.stdout}"
    bundled = _in_mounts_of(pid, f"{BUNDLED_PYTHON} -IS -c 'import sys; print(sys.prefix)'")
    assert bundled.returncode == 0, bundled.stderr
    assert bundled.stdout.strip() == str(PREFIX)
    # None of that reached the machine: its python3 still runs, nothing is mounted over it.
    assert subprocess.run(["python3", "-c", "1"], timeout=60).returncode == 0
    files, directories = pythons()
    hidden = {Path(p) for p in ["/opt", *files, *directories]}
    assert hidden.isdisjoint(mount_points())


def test_the_runtime_that_created_a_firmware_container_ran_on_the_bundle(
    clean_gateway: Gateway,
) -> None:
    gateway = clean_gateway
    pid = _containerd_pid(gateway)
    allocation = gateway.allocate("smarter-devices/rproc0")
    pod = gateway.run_firmware_pod("blinky-4hx9q", "hello", allocation)
    assert pod.ip, "the CNI plugin, exec'd on the bundle, gave the pod no address"
    assert wait_until(
        lambda: any("hello from" in line for line in gateway.container_log(pod, "firmware")), 20
    ), "the firmware's console never reached the CRI log"
    # The supervisor is the process `create` forked: its executable is the interpreter that
    # ran the runtime, as the kernel resolved it in containerd's mount namespace.
    supervisors = gateway.runtime_executables()
    assert supervisors, "no process of the runtime supervises the firmware"
    assert set(supervisors.values()) == {BUNDLED_PYTHON}
    containerd_mounts = os.readlink(f"/proc/{pid}/ns/mnt")
    assert containerd_mounts != os.readlink("/proc/self/ns/mnt")
    for supervisor in supervisors:
        assert os.readlink(f"/proc/{supervisor}/ns/mnt") == containerd_mounts
        # The kernel started the runtime's #! line: the bundle's interpreter, then the runtime.
        words = command_line(supervisor) or []
        assert words[0] == BUNDLED_PYTHON.encode(), words
        assert str(gateway.runtime).encode() in words and b"create" in words, words
