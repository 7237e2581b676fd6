"""Taking a simulated gateway down: every step is tried whatever the others did, so that no
process, mount or namespace outlives the gateway, also after a failure or Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence

from smarter_common.logs import get_logger
from testbed.inspection import firmware_records, runc_containers
from testbed.layout import SYSTEM_PATH, GatewayPaths

log = get_logger("testbed.teardown")

Step = tuple[str, Callable[[], None]]


def run_steps(steps: Sequence[Step]) -> None:
    """Each step in order; one that fails is logged and the next still runs."""
    for what, step in steps:
        try:
            step()
        except Exception as error:  # teardown goes on whatever one step does
            log.warning("teardown_step_failed", step=what, error=str(error))


def delete_orphans(
    paths: GatewayPaths,
    *,
    runtime_wrapper: Sequence[str] = (),
    runtime_env: Mapping[str, str] | None = None,
) -> None:
    """Containers whose shim is gone (containerd died mid-way): delete them as a shim would.

    Firmware containers go to the node's runtime run as containerd runs it (`runtime_wrapper`:
    the mount namespace with the node's bundle; `runtime_env`: containerd's environment), then
    every runc container to runc. One delete that fails never stops the others."""
    root = str(paths.runc_state)
    runc = shutil.which("runc") or "/usr/sbin/runc"
    runtime = [*runtime_wrapper, str(paths.runtime)]
    env = dict(runtime_env) if runtime_env is not None else {"PATH": SYSTEM_PATH}
    for container_id in firmware_records(paths):
        log.warning("deleting_orphaned_firmware_container", container_id=container_id)
        _delete([*runtime, "--root", root, "delete", "--force", container_id], env)
    for container_id in runc_containers(paths):
        log.warning("deleting_orphaned_container", container_id=container_id)
        _delete([runc, "--root", root, "delete", "--force", container_id], None)


def _delete(command: list[str], env: Mapping[str, str] | None) -> None:
    try:
        subprocess.run(command, capture_output=True, env=env, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("orphan_delete_failed", command=command, error=str(error))


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
