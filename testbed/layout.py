"""What one simulated gateway is made of and where it lives: its configuration and its paths.

The node is a network namespace of its own and two directories under one work directory: the
node's own filesystem (`node/`: containerd's config, the CNI directories, /usr/local/bin, the
kubelet's plugin directory, smarter-cni's state) and the simulator's host root (`host/`: the
remote cores' sysfs, /dev, /lib/firmware). Every other part of the test bed (bring-up, pods,
devices, inspection, teardown) finds its files through `GatewayPaths`.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from smarter_common.errors import SmarterError
from smarter_common.hostroot import HostRoot
from testbed.containerd import ContainerdLayout

if TYPE_CHECKING:
    from cni.config import NetConf

REPO = Path(__file__).resolve().parents[1]
# containerd's PATH, as a node's systemd gives it (the host-side programs name their bundled
# interpreter by absolute path and need nothing from it).
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
REFERENCE_PLUGINS = Path("/usr/lib/cni")
PRODUCTION_CONFLIST = REPO / "deploy" / "cni" / "10-smarter.conflist"
# Debian 12's packaged /etc/containerd/config.toml (containerd 1.6), as shipped.
DEBIAN_CONTAINERD_CONFIG = REPO / "tests" / "fixtures" / "containerd" / "debian-12.toml"
# Where the runtime DaemonSet installs the runtime, and its settings file beside it.
RUNTIME_BINARY = "/usr/local/bin/smarter-hybrid-runtime"
SETTINGS_SUFFIX = ".conf"
# The exec'd programs' own host-root settings (never the shared SMARTER_HOST_ROOT).
RUNTIME_HOST_ROOT_ENV = "SMARTER_RUNTIME_HOST_ROOT"
CNI_HOST_ROOT_ENV = "SMARTER_CNI_HOST_ROOT"
RPROC_RESOURCE_PREFIX = "smarter-devices/rproc"
PRODUCTION_RULES = REPO / "deploy" / "device-manager" / "rules-configmap.yaml"
RUNTIME_CLASS = REPO / "deploy" / "runtime" / "runtimeclass.yaml"


class GatewayError(SmarterError):
    """The simulated gateway could not be brought up or did something unexpected."""


Progress = Callable[[str], None]


def quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class GatewayConfig:
    """What to bring up."""

    core: str = "cortex-m4"
    # How many cores of that type the simulator runs: remoteproc0, remoteproc1, ...
    cores: int = 1
    firmware: tuple[str, ...] = ("hello", "crash", "echo")
    device_manager: bool = True
    work_parent: Path = Path("/tmp")
    keep_work_dir: bool = False
    # The distribution's containerd config the node starts from.
    containerd_config: Path = DEBIAN_CONTAINERD_CONFIG
    # Where the runtime's own settings are given: its settings file (as the docs tell an
    # operator), or containerd's environment (a systemd drop-in), beside the shared
    # SMARTER_HOST_ROOT that neither exec'd program may read.
    runtime_settings_in: Literal["file", "environment"] = "file"


@dataclass(frozen=True)
class GatewayPaths:
    """Every directory and file of one gateway, all under `work`, and its namespace's name."""

    work: Path
    netns: str

    @classmethod
    def create(cls, work_parent: Path) -> GatewayPaths:
        """A fresh work directory under `work_parent` and a fresh namespace name."""
        work = Path(tempfile.mkdtemp(prefix="se-gw-", dir=work_parent))
        # dnsmasq drops to `nobody` and must still reach the hosts directory below.
        work.chmod(0o755)
        return cls(work=work, netns=f"se-node-{secrets.token_hex(3)}")

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def sim_root(self) -> Path:
        """The simulator's host root: devices, sysfs and the firmware directory. The runtime
        and the device manager resolve those under it."""
        return self.work / "host"

    @cached_property
    def host(self) -> HostRoot:
        return HostRoot(self.sim_root)

    @property
    def node_root(self) -> Path:
        """The node's own filesystem: what a node keeps whatever its devices are (containerd's
        config, the CNI directories, the installed runtime, the kubelet's plugin directory,
        smarter-cni's state and socket). The installers and smarter-cni work under it."""
        return self.work / "node"

    @cached_property
    def node(self) -> HostRoot:
        return HostRoot(self.node_root)

    @cached_property
    def containerd(self) -> ContainerdLayout:
        return ContainerdLayout(
            self.work, config_file=self.node.path("/etc/containerd/config.toml")
        )

    @property
    def node_var_lib(self) -> Path:
        return self.node.path("/var/lib")

    @property
    def plugin_dir(self) -> Path:
        """The node's /var/lib/kubelet/device-plugins, which the kubelet stand-in serves."""
        return self.node_var_lib / "kubelet" / "device-plugins"

    @property
    def conflist(self) -> Path:
        return self.node.path("/etc/cni/net.d") / PRODUCTION_CONFLIST.name

    @property
    def runtime(self) -> Path:
        return self.node.path(RUNTIME_BINARY)

    @property
    def bundle(self) -> Path:
        """The host-side bundle as built, before the installers copy it to the node."""
        return self.work / "bin"

    @property
    def images(self) -> Path:
        return self.work / "images"

    @property
    def device_rules(self) -> Path:
        return self.work / "device-rules.yaml"

    def netconf(self) -> NetConf:
        """smarter-cni's view of the installed conflist: bridge, subnet, gateway, state and DNS
        paths."""
        from cni.config import load_conflist, parse

        return parse(load_conflist(self.conflist))

    @property
    def firmware_records(self) -> Path:
        """Where the hybrid runtime keeps its records of firmware containers (runc's --root)."""
        return self.containerd.runc_root / "k8s.io" / "smarter-hybrid"

    @property
    def runc_state(self) -> Path:
        """Where runc keeps state for the shim's containers (its --root)."""
        return self.containerd.runc_root / "k8s.io"


def settings_file(executable: Path) -> Path:
    """`<executable>.conf`: where an exec'd program reads its own settings."""
    return executable.with_name(executable.name + SETTINGS_SUFFIX)
