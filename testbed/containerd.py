"""A containerd of our own: where it keeps things, its process, and what it leaves behind.

Its config is a distribution's own, given the runtime by the installers and this layout's
paths by testbed.node_config: every path it uses (root, state, sockets, runc state) is under one
work directory, so it never touches the system's containerd. What cannot be moved (the shims'
sockets live under /run/containerd/s/, named by a hash that includes our socket path) is
removed by the shims.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime_handler.containerd_config import HANDLER
from sim.mounts import unmount
from smarter_common.errors import SmarterError
from smarter_common.logs import get_logger
from smarter_common.procfs import pids_with
from testbed.processes import Processes, Started

log = get_logger("testbed.containerd")

HYBRID_HANDLER = HANDLER

K8S_NAMESPACE = "k8s.io"


class ContainerdError(SmarterError):
    """containerd could not be configured, started or told to import an image."""


@dataclass(frozen=True)
class ContainerdLayout:
    """Where one containerd keeps everything, all under `base` (its config may live elsewhere,
    e.g. in a node's /etc/containerd)."""

    base: Path
    config_file: Path | None = None

    @property
    def config(self) -> Path:
        return self.config_file or self.base / "config.toml"

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def socket(self) -> Path:
        return self.base / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.base / "runc"

    @property
    def cni_bin_dir(self) -> Path:
        return self.base / "cni-bin"

    @property
    def cni_conf_dir(self) -> Path:
        return self.base / "net.d"

    @property
    def pod_logs(self) -> Path:
        return self.base / "pod-logs"


def overlay_works(directory: Path) -> bool:
    """Whether an overlay filesystem can be mounted on `directory`'s filesystem."""
    probe = directory / ".overlay-probe"
    parts = {name: probe / name for name in ("lower", "upper", "work", "merged")}
    for path in parts.values():
        path.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={parts['lower']},upperdir={parts['upper']},workdir={parts['work']}"
    mounted = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(parts["merged"])],
        capture_output=True,
    )
    if mounted.returncode == 0:
        unmount(parts["merged"])
    subprocess.run(["rm", "-rf", str(probe)], capture_output=True)
    return mounted.returncode == 0


class Containerd:
    """One containerd process inside the node's network namespace."""

    def __init__(self, layout: ContainerdLayout, processes: Processes) -> None:
        self.layout = layout
        self._processes = processes
        self._started: Started | None = None

    def start(
        self,
        *,
        netns: str,
        env: dict[str, str],
        timeout: float = 60.0,
        wrapper: Sequence[str] = (),
    ) -> None:
        """Start containerd in `netns`; `wrapper` is a command that execs the rest in the
        mount namespace containerd gets (testbed.hidden_python), so the PID stays containerd's."""
        self._started = self._processes.start(
            "containerd",
            [*wrapper, "containerd", "--config", self.layout.config, "--log-level", "info"],
            netns=netns,
            env=env,
        )
        self._processes.wait_for(
            self._started, self.layout.socket.exists, timeout=timeout, what="open its socket"
        )

    def check_alive(self) -> None:
        if self._started is not None:
            self._started.check_alive()

    def ctr(self, *args: str, timeout: float = 120.0) -> str:
        command = [
            "ctr",
            "--address",
            str(self.layout.socket),
            "--namespace",
            K8S_NAMESPACE,
            *args,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise ContainerdError(f"`ctr {' '.join(args)}` failed: {result.stderr.strip()}")
        return result.stdout

    def import_image(self, tarball: Path, snapshotter: str) -> None:
        self.ctr("images", "import", "--snapshotter", snapshotter, str(tarball))

    def shim_pids(self) -> list[int]:
        """PIDs of the runc shims this containerd started (they outlive it if left running)."""
        return pids_with(b"containerd-shim", f"-address\0{self.layout.socket}\0".encode())

    def stop(self) -> None:
        if self._started is not None:
            self._processes.stop(self._started, grace=20)
            self._started = None
        for pid in self.shim_pids():
            log.warning("leftover_shim_killed", pid=pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
