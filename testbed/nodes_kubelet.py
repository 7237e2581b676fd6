"""Run smarter-device-manager with a host root and no `--plugin-dir` beside a kubelet stand-in
on the node's own `/var/lib/kubelet/device-plugins`; print the resources that registered.

`python -m testbed.nodes_kubelet ROOT RULES RESOURCE...` runs only where `/var/lib`
is a tmpfs of a private mount namespace (the test starts it under `unshare --mount` after
mounting one), so the machine's own `/var/lib/kubelet` is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sim.mounts import mount_points
from testbed.kubelet import start

NODE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
WAIT_S = 10.0


def _var_lib_is_a_private_tmpfs() -> bool:
    return Path("/var/lib") in mount_points() and os.stat("/var/lib").st_dev != os.stat("/").st_dev


def main(argv: list[str]) -> int:
    root, rules, *resources = argv
    if not _var_lib_is_a_private_tmpfs():
        print("refusing: /var/lib is not a tmpfs of a private mount namespace", file=sys.stderr)
        return 2
    kubelet = start(NODE_PLUGIN_DIR)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "device_plugin", "--rules", rules, "--log-format", "json"],
        env={**os.environ, "SMARTER_HOST_ROOT": root},
    )
    try:
        registered = kubelet.wait_registered(resources, timeout=WAIT_S)
        print(json.dumps(sorted(registered)))
    finally:
        daemon.terminate()
        daemon.wait(timeout=WAIT_S)
        kubelet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
