"""`python -m testbed.demo`: bring up a simulated gateway, show what it does, tear it all down.

Run as root after `scripts/setup.sh` (scripts/demo.sh does both). Everything it starts lives in
a network namespace and a work directory of its own, and is removed on the way out, also on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from smarter_common.deadline import Deadline
from smarter_common.errors import SmarterError
from testbed.cri.client import CriError

if TYPE_CHECKING:
    from testbed.gateway import Gateway, Pod

CLIENT_POD = "client-x8k2p"
SENSOR_POD = "sensor-7xk2p"
FIRMWARE_POD = "blinky-4hx9q"
SECOND_FIRMWARE_POD = "blinky-9zz7m"
CRASH_POD = "crasher-2kd8w"
PARTITIONED_EXAMPLE = Path("deploy") / "examples" / "partitioned-pod.yaml"
SIDECAR = "shell"
ANSWERS_SHOWN = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.demo",
        description=(
            "Bring up a simulated gateway (our own containerd with smarter-cni, the hybrid"
            " runtime and smarter-device-manager, remote cores simulated in QEMU), run two"
            " ordinary pods and a firmware pod, show their addresses, a name resolved between"
            " them, the advertised devices and the firmware's console, a sidecar talking to its"
            " pod's firmware over the data channel, then tear it all down."
            " Needs root; touches nothing outside its own network namespace and work directory."
        ),
    )
    parser.add_argument(
        "--core",
        default="cortex-m4",
        help="the simulated remote core and the firmware's target (default cortex-m4)",
    )
    parser.add_argument(
        "--console-seconds",
        type=float,
        default=6.0,
        metavar="S",
        help="how long to follow the firmware's console (default 6)",
    )
    parser.add_argument(
        "--containerd-config",
        type=Path,
        metavar="FILE",
        help="the distribution's containerd config the node starts from, before the installers"
        " run (default: Debian 12's packaged one, tests/fixtures/containerd/debian-12.toml)",
    )
    parser.add_argument(
        "--keep-work-dir",
        action="store_true",
        help="keep the work directory (logs, configs) after the teardown",
    )
    parser.add_argument(
        "--log-level", default="warning", help="log level of the harness (default warning)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from smarter_common import logs

    logs.configure(level=args.log_level, fmt="console")
    # Imported once logging is configured: their module loggers bind the configuration then.
    import os

    from testbed.gateway import Gateway, GatewayConfig

    if os.geteuid() != 0:
        print("demo: run as root (network namespaces, containerd, FUSE)", file=sys.stderr)
        return 1
    # Ctrl-C and SIGTERM both mean "tear down now", even if the shell started us ignoring SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    config = GatewayConfig(core=args.core, keep_work_dir=args.keep_work_dir)
    if args.containerd_config is not None:
        config = dataclasses.replace(config, containerd_config=args.containerd_config)
    gateway = Gateway(config, progress=_step)
    status = 0
    try:
        print(f"work directory: {gateway.work}")
        gateway.start()
        _show(gateway, args.console_seconds)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        status = 130
    except SmarterError as error:
        print(f"\ndemo failed: {error}", file=sys.stderr, flush=True)
        status = 1
    except BrokenPipeError:
        status = 1  # the output went away (e.g. `| head`); tear down quietly
    finally:
        with _shielded():
            status = _teardown(gateway, keep=args.keep_work_dir) or status
    return status


def _teardown(gateway: Gateway, *, keep: bool) -> int:
    """Remove the pods, check nothing of theirs is left, then stop everything; 1 if not clean."""
    left: list[str] = []
    try:
        _step("tearing down: pods, then containerd, agents, simulator, namespace, mounts")
        gateway.remove_every_pod()
        if gateway.cri is not None:
            left = gateway.leftovers()
    except Exception as error:  # whatever happens here, close() below must run
        left = [f"could not check what the pods left: {error}"]
    finally:
        gateway.close()
    left.extend(f"process {pid} of the simulated cores" for pid in gateway.qemu_pids())
    if gateway.work.exists() and not keep:
        left.append(f"work directory {gateway.work}")
    try:
        if left:
            print("left behind:\n  " + "\n  ".join(left), file=sys.stderr, flush=True)
        else:
            print("done: every pod, process, namespace and mount of the gateway is gone")
            if keep:
                print(f"logs and configs kept in {gateway.work}")
        sys.stdout.flush()
    except OSError:
        pass  # nobody is reading any more (a closed pipe); the teardown itself is done
    return 1 if left else 0


def _show(gateway: Gateway, console_seconds: float) -> None:
    from testbed.gateway import RPROC_RESOURCE_PREFIX

    cri = gateway.cri
    assert cri is not None
    version = cri.version()
    _heading(f"containerd {version.runtime_version} over CRI {version.runtime_api_version}")
    print(f"images: {', '.join(cri.image_tags())}")

    _heading("resources smarter-device-manager advertises to the kubelet")
    for resource, ids in gateway.resources().items():
        shown = ", ".join(ids) if len(ids) <= 3 else f"{ids[0]} .. {ids[-1]}"
        print(f"  {resource:32} {len(ids):3} device(s): {shown}")

    _step("starting pods")
    client = gateway.run_busybox_pod(CLIENT_POD)
    sensor = gateway.run_busybox_pod(SENSOR_POD)
    allocation = gateway.allocate(f"{RPROC_RESOURCE_PREFIX}0")
    firmware = gateway.run_firmware_pod(FIRMWARE_POD, "hello", allocation)

    _heading("pods (addresses from smarter-cni)")
    print(f"  {'POD':16} {'RUNTIME':8} {'IP':15} CONTAINERS")
    for pod in (client, sensor, firmware):
        handler = pod.spec.runtime_handler or "runc"
        print(f"  {pod.name:16} {handler:8} {pod.ip:15} {', '.join(pod.containers)}")
    env = ", ".join(f"{k}={v}" for k, v in allocation.env.items())
    print(f"  {firmware.name} got {allocation.resource} from the device manager: {env}")

    _heading(f"names in the node's DNS ({gateway.dns_server}), asked from inside {CLIENT_POD}")
    for name in (SENSOR_POD, "sensor"):
        code, out, _ = cri.exec_sync(client.containers["main"], ["nslookup", name])
        addresses = _answers(out)
        shown = ", ".join(addresses) if code == 0 and addresses else "not found"
        print(f"  nslookup {name:14} -> {shown}")

    _heading(f"console of {firmware.name} (the {gateway.config.core} running it, live)")
    _follow_console(gateway, firmware, console_seconds)
    print(f"  cores: {_cores(gateway)}")

    _heading("a second firmware pod for the same core")
    try:
        second = gateway.run_firmware_pod(SECOND_FIRMWARE_POD, "hello", allocation)
    except CriError as error:
        print(f"  {SECOND_FIRMWARE_POD}: refused: {_runtime_reason(error.details)}")
    else:
        print(f"  {SECOND_FIRMWARE_POD}: started (the core was not reserved!)")
        gateway.remove_pod(second)
    gateway.remove_every_pod_named(SECOND_FIRMWARE_POD)

    _step(f"stopping {firmware.name}'s firmware (StopContainer), then removing the pod")
    cri.stop_container(firmware.containers["firmware"], timeout=5)
    print(f"  cores: {_cores(gateway)}")
    gateway.remove_pod(firmware)

    _data_channel(gateway)

    _heading("a firmware that crashes")
    crasher = gateway.run_firmware_pod(CRASH_POD, "crash", gateway.allocate(allocation.resource))
    status = cri.wait_container_exited(crasher.containers["firmware"], timeout=30)
    for line in gateway.container_log(crasher, "firmware"):
        print(f"  | {line}")
    print(f"  {CRASH_POD}: exited with code {status.exit_code} ({status.reason or 'no reason'})")
    print(f"  cores: {_cores(gateway)}")


def _data_channel(gateway: Gateway) -> None:
    """The example partitioned pod: the sidecar's lines answered by the echo firmware, then the
    close the sidecar sees when the firmware stops."""
    import yaml

    from testbed.gateway import REPO

    cri = gateway.cri
    assert cri is not None
    _heading("data channel")
    pod = gateway.run_manifest_pod(yaml.safe_load((REPO / PARTITIONED_EXAMPLE).read_text()))
    print(
        f"  {pod.name} ({PARTITIONED_EXAMPLE}): echo firmware and a busybox sidecar `{SIDECAR}`,"
        " which writes to /dev/smarter/firmware/tty1 and prints what comes back"
    )
    shown = _follow_log(gateway, pod, SIDECAR, lambda lines: len(lines) >= ANSWERS_SHOWN, 20)
    _step(f"stopping {pod.name}'s firmware (StopContainer)")
    cri.stop_container(pod.containers["firmware"], timeout=5)
    status = cri.wait_container_exited(pod.containers[SIDECAR], timeout=10)
    for line in gateway.container_log(pod, SIDECAR)[shown:]:
        print(f"  {SIDECAR} | {line}")
    print(f"  {SIDECAR}: exited with code {status.exit_code} once its channel closed")
    gateway.remove_pod(pod)


def _follow_log(
    gateway: Gateway, pod: Pod, container: str, enough: Callable[[list[str]], bool], seconds: float
) -> int:
    """Print the container's log lines as they come until `enough` holds or `seconds` pass;
    how many were printed."""
    shown = 0
    deadline = Deadline(seconds)
    while True:
        lines = gateway.container_log(pod, container)
        for line in lines[shown:]:
            print(f"  {container} | {line}", flush=True)
        shown = len(lines)
        if enough(lines) or deadline.expired():
            return shown
        deadline.sleep(0.2)


def _runtime_reason(details: str) -> str:
    """The runtime's own message inside containerd's wrapping of it."""
    _, _, reason = details.rpartition("OCI runtime create failed: ")
    return (reason or details).removesuffix(": unknown")


def _follow_console(gateway: Gateway, pod: Pod, seconds: float) -> None:
    shown = 0
    deadline = Deadline(seconds)
    while not deadline.expired():
        lines = gateway.container_log(pod, "firmware")
        for line in lines[shown:]:
            print(f"  | {line}", flush=True)
        shown = len(lines)
        deadline.sleep(0.2)
    if shown == 0:
        print("  (no console output yet)")


def _answers(nslookup_output: str) -> list[str]:
    """The addresses in busybox nslookup's answer section (after the server's own lines)."""
    _, _, answer = nslookup_output.partition("Name:")
    return [
        line.split(":", 1)[1].strip()
        for line in answer.splitlines()
        if line.startswith("Address") and ":" in line
    ]


def _cores(gateway: Gateway) -> str:
    return ", ".join(f"{name} {state}" for name, state in gateway.core_states().items())


def _heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _step(text: str) -> None:
    print(f"-> {text}", flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _shielded() -> Iterator[None]:
    """Let the teardown finish even if Ctrl-C is pressed again."""

    def _busy(signum: int, frame: FrameType | None) -> None:
        print("  (still tearing down; please wait)", flush=True)

    previous_int = signal.signal(signal.SIGINT, _busy)
    previous_term = signal.signal(signal.SIGTERM, _busy)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


if __name__ == "__main__":
    sys.exit(main())
