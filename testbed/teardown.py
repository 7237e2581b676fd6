"""Taking a simulated gateway down: every step is tried whatever the others did, so that no
process, mount or namespace outlives the gateway, also after a failure or Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence

from smarter_common.logs import get_logger
from testbed.inspection import firmware_records, runc_containers
from testbed.layout import RUNTIME_HOST_ROOT_ENV, SYSTEM_PATH, GatewayConfig, GatewayPaths

log = get_logger("testbed.teardown")

Step = tuple[str, Callable[[], None]]


def run_steps(steps: Sequence[Step]) -> None:
    """Each step in order; one that fails is logged and the next still runs."""
    for what, step in steps:
        try:
            step()
        except Exception as error:  # teardown goes on whatever one step does
            log.warning("teardown_step_failed", step=what, error=str(error))


def delete_orphans(paths: GatewayPaths, config: GatewayConfig) -> None:
    """Containers whose shim is gone (containerd died mid-way): delete them as a shim would."""
    root = str(paths.runc_state)
    # The installed runtime reads its settings file, as when the shim calls it.
    env = {"PATH": SYSTEM_PATH}
    if config.runtime_settings_in == "environment":
        env[RUNTIME_HOST_ROOT_ENV] = str(paths.sim_root)
    runtime = str(paths.runtime)
    runc = shutil.which("runc") or "/usr/sbin/runc"
    for container_id in firmware_records(paths):
        log.warning("deleting_orphaned_firmware_container", container_id=container_id)
        subprocess.run(
            [runtime, "--root", root, "delete", "--force", container_id],
            capture_output=True,
            env=env,
            timeout=60,
        )
    for container_id in runc_containers(paths):
        log.warning("deleting_orphaned_container", container_id=container_id)
        subprocess.run(
            [runc, "--root", root, "delete", "--force", container_id],
            capture_output=True,
            timeout=60,
        )


def delete_netns(netns: str) -> None:
    """Kill what still runs in the node's namespace (all of it ours), then delete it."""
    pids = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True
    ).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            continue
    subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
