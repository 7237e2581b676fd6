"""podman (its CNI backend) runs containers on smarter-cni, and they find each other by name.

podman passes `K8S_POD_NAME=<container name>`: generated names such as `focused_cray`, or a
user's `Web_1`. Everything podman does stays in the test's node netns and a temp directory:
its storage (`--root`, `--runroot`, `--tmpdir`), its containers.conf (CONTAINERS_CONF: CNI
backend, our plugin directory and conflist directory), images loaded from local tarballs.

podman runs under `nsenter --net`, not `ip netns exec`: the latter gives every command a
mount namespace of its own, so the container netns that `podman run` mounts would be gone
for the `podman exec` and `podman rm` that follow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from sim.mounts import detach_all
from sim.node_images import BUSYBOX_IMAGE, build_node_images
from smarter_common.procfs import pids_with
from testbed.netns import netns_path, network_namespace
from tests.cni.harness import (
    GATEWAY,
    REPO,
    Node,
    agent,
    conflist,
    dnsmasq,
    make_state_dir,
    plugin_config,
)

pytestmark = [pytest.mark.netns, pytest.mark.podman, pytest.mark.dnsmasq]

NETWORK = "smarter"


@dataclass
class Podman:
    """One isolated podman: its own storage, configuration and plugin directory."""

    home: Path
    netns: str

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [
            "nsenter", f"--net={netns_path(self.netns)}", "--",
            "podman", "--root", str(self.home / "root"), "--runroot", str(self.home / "run"),
            "--tmpdir", str(self.home / "tmp"), "--storage-driver", "vfs", *args,
        ]  # fmt: skip
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.home),
            "CONTAINERS_CONF": str(self.home / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.home / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.home / "registries.conf"),
        }
        result = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=120, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {result.returncode} {result.stderr}")
        return result


def _containers_conf(home: Path) -> str:
    return (
        "[containers]\n"
        # podman raises both to the kernel's maximum by default, which needs CAP_SYS_RESOURCE.
        'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        "[network]\n"
        'network_backend = "cni"\n'
        f'cni_plugin_dirs = ["{home / "cni-bin"}"]\n'
        f'network_config_dir = "{home / "net.d"}"\n'
    )


@contextmanager
def isolated_podman(netns: str, plugin_conflist: dict[str, object]) -> Iterator[Podman]:
    home = Path(tempfile.mkdtemp(prefix="scni-podman-", dir="/tmp"))
    podman = Podman(home, netns)
    try:
        for directory in ("cni-bin", "net.d", "root", "run", "tmp", "images"):
            (home / directory).mkdir()
        (home / "containers.conf").write_text(_containers_conf(home))
        (home / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{home / "run"}"\n'
            f'graphroot = "{home / "root"}"\n'
        )
        (home / "registries.conf").write_text("")
        (home / "net.d" / f"{NETWORK}.conflist").write_text(json.dumps(plugin_conflist))
        subprocess.run(
            [sys.executable, "scripts/build_zipapps.py", "--out", str(home / "zipapps")],
            cwd=REPO, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        shutil.copy2(home / "zipapps" / "smarter-cni", home / "cni-bin" / "smarter-cni")
        build_node_images(home / "images")
        podman("load", "-i", str(home / "images" / "busybox.tar"))
        yield podman
    finally:
        podman("rm", "--all", "--force", "--time", "0", check=False)
        podman("system", "reset", "--force", check=False)
        _stop_processes_using(home)
        detach_all(home)
        _remove_cgroups_named(home.name)
        shutil.rmtree(home, ignore_errors=True)


def _stop_processes_using(home: Path) -> None:
    """Kill, by PID, any conmon or container process podman left that names our directory."""
    for pid in pids_with(b"", str(home).encode()):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _remove_cgroups_named(name: str) -> None:
    """Remove the cgroups podman made under our --cgroup-parent (conmon's and containers')."""
    cgroups = Path("/sys/fs/cgroup")
    for top in (cgroups / name, *cgroups.glob(f"*/{name}")):  # cgroup v2, v1 hierarchies
        for directory in sorted(top.glob("**/"), key=lambda p: len(p.parts), reverse=True):
            with suppress(OSError):
                directory.rmdir()


def _start(podman: Podman, *name: str) -> str:
    started = podman(
        "run", "--detach", "--network", NETWORK, "--dns", GATEWAY, *name,
        "--cgroup-parent", f"/{podman.home.name}",
        "--entrypoint", "/bin/busybox", BUSYBOX_IMAGE, "sleep", "600",
        check=False,
    )  # fmt: skip
    assert started.returncode == 0, f"podman run {name}: {started.returncode} {started.stderr}"
    return started.stdout.strip()


def _name_and_address(podman: Podman, container: str) -> tuple[str, str]:
    template = f"{{{{.Name}}}} {{{{.NetworkSettings.Networks.{NETWORK}.IPAddress}}}}"
    name, address = podman("inspect", "--format", template, container).stdout.split()
    return name, address


def test_podman_containers_with_generated_and_chosen_names_find_each_other_by_name() -> None:
    state = make_state_dir()
    try:
        with network_namespace("scn-pm-") as netns:
            node_ = Node(netns, state, conflist([plugin_config(state)]))
            with (
                agent(node_),
                dnsmasq(node_),
                isolated_podman(netns, node_.conflist) as podman,
            ):
                containers = [_start(podman), _start(podman), _start(podman, "--name", "Web_1")]
                found = dict(_name_and_address(podman, c) for c in containers)
                assert "Web_1" in found
                safe = {name: name.lower().replace("_", "-") for name in found}
                assert safe["Web_1"] == "web-1"
                for asker, other in ((0, 1), (1, 2), (2, 0)):
                    target = _name_and_address(podman, containers[other])[0]
                    looked_up = podman(
                        "exec", containers[asker], "nslookup", safe[target], GATEWAY, check=False
                    )
                    assert found[target] in looked_up.stdout, looked_up
                    pinged = podman(
                        "exec", containers[asker], "ping", "-c", "1", "-W", "2", safe[target],
                        check=False,
                    )  # fmt: skip
                    assert pinged.returncode == 0, pinged
                podman("rm", "--force", "--time", "0", *containers)
                assert node_.leases() == []
                assert node_.records() == []
    finally:
        shutil.rmtree(state, ignore_errors=True)
