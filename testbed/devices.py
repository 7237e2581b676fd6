"""Devices on the simulated gateway: smarter-device-manager registered with a kubelet stand-in,
and allocation as the kubelet does it for a container's `smarter-devices/*` limits."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from smarter_common.errors import SmarterError
from testbed.kubelet import Kubelet
from testbed.layout import (
    PRODUCTION_RULES,
    REPO,
    RPROC_RESOURCE_PREFIX,
    GatewayError,
    GatewayPaths,
)
from testbed.processes import Processes


@dataclass(frozen=True)
class Allocation:
    """What the device manager handed over for one resource, as the kubelet passes it on."""

    resource: str
    device_ids: tuple[str, ...]
    env: Mapping[str, str]
    devices: tuple[tuple[str, str, str], ...]


def start_device_manager(kubelet: Kubelet, paths: GatewayPaths, processes: Processes) -> None:
    """smarter-device-manager against `kubelet` (started), ready once it registered rproc0."""
    paths.device_rules.write_text(device_rules())
    # As on a node whose devices are the simulator's (docs/smarter-sim.md): the host root
    # names the devices and sysfs; the kubelet's plugin directory is the node's own, the
    # device manager's default /var/lib/kubelet/device-plugins (here the node directory's
    # /var/lib, mounted on /var/lib for the device manager alone); the device paths it
    # hands over are real paths on this machine, where containerd opens them.
    command = [
        sys.executable,
        "-m",
        "device_plugin",
        "--host-root",
        str(paths.sim_root),
        "--rules",
        str(paths.device_rules),
        "--device-paths",
        "local",
    ]
    started = processes.start(
        "smarter-device-manager", with_var_lib(paths.node_var_lib, command), cwd=REPO
    )
    rproc0 = f"{RPROC_RESOURCE_PREFIX}0"

    def registered() -> bool:
        return rproc0 in advertised(kubelet)

    try:
        processes.wait_for(started, registered, timeout=30, what=f"register {rproc0}")
    except SmarterError as error:
        raise GatewayError(f"smarter-device-manager: {error}") from error


def advertised(kubelet: Kubelet) -> dict[str, list[str]]:
    """Resource name -> healthy device IDs, as the kubelet stand-in sees them advertised."""
    found: dict[str, list[str]] = {}
    for name in sorted(kubelet.registered()):
        devices = kubelet.devices(name) or []
        found[str(name)] = [str(d.ID) for d in devices if d.health == "Healthy"]
    return found


def allocate(kubelet: Kubelet, resource: str, count: int = 1) -> Allocation:
    """Allocate `count` devices of `resource` via the device manager, as the kubelet does."""
    available = advertised(kubelet).get(resource, [])
    if len(available) < count:
        raise GatewayError(f"{resource} advertises {available}, not {count} device(s)")
    device_ids = tuple(available[:count])
    response = kubelet.allocate(resource, list(device_ids)).container_responses[0]
    envs = dict(response.envs)
    # `--device-paths local`: the paths are the ones containerd opens on this machine.
    devices = tuple(
        (str(d.container_path), str(d.host_path), str(d.permissions)) for d in response.devices
    )
    return Allocation(resource, device_ids, envs, devices)


def device_rules() -> str:
    """The rules of the device manager's DaemonSet (its ConfigMap's conf.yaml)."""
    import yaml

    configmap = yaml.safe_load(PRODUCTION_RULES.read_text())
    return str(configmap["data"]["conf.yaml"])


def with_var_lib(var_lib: Path, command: Sequence[str]) -> list[str]:
    """`command` in a mount namespace of its own where `var_lib` is mounted on /var/lib.

    The machine's /var/lib is untouched; the namespace goes when the process does.
    """
    script = 'mount --bind "$0" /var/lib && exec "$@"'
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        str(var_lib),
        *command,
    ]
