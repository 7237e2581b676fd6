"""Firmware containers without Kubernetes: podman, ctr and Docker run the runtime's zipapp.

The commands are the ones docs/container-tools.md gives, plus only what keeps each tool off the
machine's own state: podman's --root/--runroot/--tmpdir and CONTAINERS_CONF, a containerd and a
dockerd of the test's own (root, state, sockets under a temporary directory, in a network
namespace the test creates). The firmware image is built by buildah from
deploy/examples/tools/Dockerfile; the gateway is the simulator with two Cortex-M4 cores. Each
test shows the console in the tool's own output, none of the runtime's log lines in it, and the
core offline with nothing left once the container is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime_handler import engine_config
from sim.mounts import detach_all
from smarter_common.procfs import pids_with, process_alive
from testbed.containerd import Containerd, ContainerdLayout
from testbed.netns import network_namespace
from testbed.processes import Processes
from testbed.simulator import Simulator, running_simulator

pytestmark = [
    pytest.mark.containerd,
    pytest.mark.podman,
    pytest.mark.fuse,
    pytest.mark.qemu,
]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deploy" / "examples" / "tools"
IMAGE = "localhost/firmware/hello:1"
CONSOLE_LINE = "hello from cortex-m4 3"
INSTALL_HINT = "run scripts/setup.sh as root (Debian packages podman, buildah, docker.io)"
# What the runtime's own logging looks like (logfmt or JSON): none of it may reach the output.
RUNTIME_LOG_MARKS = ("logger=smarter-hybrid-runtime", '"logger": "smarter-hybrid-runtime"')
WAIT = 60.0
INSTALLED = "/usr/local/bin/smarter-hybrid-runtime"
# The commands docs/container-tools.md gives (tests/tools/test_examples.py holds it to them).
PODMAN_RUN = (
    "--runtime",
    "hybrid",
    "run",
    "--name",
    "fw",
    "--network",
    "none",
    "--env",
    "SMARTER_RPROC=remoteproc1",
    IMAGE,
)
DOCKER_RUN = (
    "run",
    "--name",
    "fw",
    "--runtime",
    "hybrid",
    "--network",
    "none",
    "--env",
    "SMARTER_RPROC=remoteproc1",
    IMAGE,
)
CTR_RUN = (
    "run",
    "--runtime",
    "io.containerd.runc.v2",
    "--runc-binary",
    INSTALLED,
    "--env",
    "SMARTER_RPROC=remoteproc0",
    IMAGE,
    "fw",
)


def _require(*programs: str) -> None:
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: {INSTALL_HINT}")


def _run(command: Sequence[str | Path], **kwargs: object) -> str:
    result = subprocess.run(  # type: ignore[call-overload]
        [str(part) for part in command], capture_output=True, text=True, timeout=120, **kwargs
    )
    if result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}): {result.stderr}")
    out: str = result.stdout
    return out


def _wait(
    condition: Callable[[], bool],
    what: str,
    timeout: float = WAIT,
    seen: Callable[[], str] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; {seen()}")
        time.sleep(0.1)


@dataclass
class Bed:
    """The module's gateway, the runtime as installed, and the firmware image."""

    gateway: Simulator
    runtime: Path
    work: Path
    oci_archive: Path
    docker_archive: Path
    podman_storage: list[str]

    def core_state(self, core: str) -> str:
        path = self.gateway.host.remoteproc_class / core / "state"
        return path.read_text().strip()

    def firmware_files(self) -> list[str]:
        return sorted(p.name for p in self.gateway.host.lib_firmware.glob("smarter-*"))


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    if os.geteuid() != 0:
        pytest.fail("these tests need root (FUSE, containerd, dockerd, podman's storage)")
    _require("podman", "buildah", "ctr", "containerd", "arm-none-eabi-gcc")
    work = tmp_path_factory.mktemp("tools")
    gateway_root = work / "gw"
    # The zipapp, installed as a node has it, with its settings file beside it: podman and
    # Docker run the runtime with their own environment, so the file is what points it here.
    bin_dir = work / "bin"
    _run([sys.executable, REPO / "scripts/build_zipapps.py", "--out", bin_dir])
    runtime = bin_dir / "smarter-hybrid-runtime"
    runtime.with_name(runtime.name + ".conf").write_text(
        f"# the simulated gateway\nSMARTER_RUNTIME_HOST_ROOT={gateway_root}\n"
    )
    context = work / "context"
    context.mkdir()
    shutil.copy(EXAMPLES / "Dockerfile", context / "Dockerfile")
    elf = _run(
        [
            sys.executable,
            "-m",
            "sim",
            "build-firmware",
            "--kind",
            "hello",
            "--cpu",
            "cortex-m4",
            "--out",
            work / "fw",
        ],
        cwd=REPO,
    ).strip()
    shutil.copy(elf, context / "firmware.elf")
    # podman refuses a --runroot longer than 50 characters: pytest's directories are longer.
    storage = Path(tempfile.mkdtemp(prefix="se-tools-", dir="/tmp"))
    (storage / "tmp").mkdir()
    podman_storage = [
        f"--root={storage / 'root'}",
        f"--runroot={storage / 'run'}",
    ]
    conf = work / "empty-containers.conf"
    conf.write_text("")
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    try:
        _run(["buildah", *podman_storage, "bud", "--layers=false", "-t", IMAGE, context], env=env)
        oci_archive, docker_archive = work / "hello.oci.tar", work / "hello.docker.tar"
        _run(
            ["buildah", *podman_storage, "push", IMAGE, f"oci-archive:{oci_archive}:{IMAGE}"],
            env=env,
        )
        _run(
            ["buildah", *podman_storage, "push", IMAGE, f"docker-archive:{docker_archive}:{IMAGE}"],
            env=env,
        )
        with running_simulator(gateway_root, ["cortex-m4", "cortex-m4"]) as gateway:
            yield Bed(
                gateway,
                runtime,
                work,
                oci_archive,
                docker_archive,
                [*podman_storage, f"--tmpdir={storage / 'tmp'}"],
            )
    finally:
        subprocess.run(
            ["podman", *podman_storage, "--tmpdir", str(storage / "tmp"), "rm", "--all", "--force"],
            env=env,
            capture_output=True,
            check=False,
        )
        detach_all(storage)
        shutil.rmtree(storage, ignore_errors=True)


def _assert_clean_output(output: str) -> None:
    own = [line for line in output.splitlines() if any(m in line for m in RUNTIME_LOG_MARKS)]
    assert not own, f"the runtime's own log lines reached the container's output: {own}"


@contextlib.contextmanager
def _attached(
    command: Sequence[str | Path], work: Path, name: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`command` (a tool's `run`, attached) with its stdout and stderr in one file."""
    output = work / f"{name}.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [str(p) for p in command], stdout=sink, stderr=sink, stdin=subprocess.DEVNULL, env=env
        )
    try:
        yield process, output
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def _wait_for_console(output: Path, tool: str) -> None:
    def shown() -> str:
        return output.read_text(errors="replace")

    _wait(lambda: CONSOLE_LINE in shown(), f"the console in {tool}'s output", seen=shown)


# --- podman --------------------------------------------------------------------------------


@dataclass
class Podman:
    """podman's command line on the test's storage, and the environment naming its config."""

    storage: list[str]
    env: dict[str, str]

    def __call__(self, *words: str) -> list[str]:
        return ["podman", *self.storage, *words]

    def run(self, *words: str) -> str:
        return _run(self(*words), env=self.env)


@pytest.fixture
def podman(bed: Bed, tmp_path: Path) -> Iterator[Podman]:
    """podman on the test's storage, with containers.conf as the installer left it."""
    host = tmp_path / "host"
    conf = host / "etc/containers/containers.conf"
    conf.parent.mkdir(parents=True)
    shutil.copy("/usr/share/containers/containers.conf", conf)  # Debian's packaged defaults
    (host / "usr/bin").mkdir(parents=True)
    (host / "usr/bin/podman").write_text("")
    status = engine_config.main(["--host-root", str(host), "--binary", str(bed.runtime)])
    assert status == 0
    tool = Podman(bed.podman_storage, {**os.environ, "CONTAINERS_CONF": str(conf)})
    yield tool
    subprocess.run(tool("rm", "--all", "--force"), env=tool.env, capture_output=True, check=False)


def test_podman_runs_firmware_with_the_runtime_from_containers_conf(
    bed: Bed, podman: Podman
) -> None:
    run = podman(*PODMAN_RUN)
    with _attached(run, bed.work, "podman-run", podman.env) as (process, output):
        _wait_for_console(output, "podman")
        assert bed.core_state("remoteproc1") == "running"
        assert bed.core_state("remoteproc0") == "offline"
        podman.run("stop", "fw")
        assert process.wait(timeout=WAIT) == 143
        assert bed.core_state("remoteproc1") == "offline"
    shown = output.read_text()
    assert CONSOLE_LINE in shown
    logs = podman.run("logs", "fw")
    assert CONSOLE_LINE in logs
    podman.run("rm", "fw")
    _assert_nothing_left(bed)
    _assert_clean_output(shown + logs)


def test_podman_kill_stops_the_core_and_rm_leaves_nothing(bed: Bed, podman: Podman) -> None:
    # The runtime named by its path, as `podman --runtime` also takes it; first free core.
    container = podman.run(
        "--runtime", str(bed.runtime), "run", "--detach", "--name", "fw", "--network", "none", IMAGE
    ).strip()
    _wait(lambda: bed.core_state("remoteproc0") == "running", "remoteproc0 running")
    _wait(lambda: CONSOLE_LINE in podman.run("logs", "fw"), "the console in logs")
    podman.run("kill", "fw")
    _wait(lambda: bed.core_state("remoteproc0") == "offline", "remoteproc0 offline")
    inspect = json.loads(podman.run("inspect", "fw"))
    assert inspect[0]["State"]["ExitCode"] == 137
    podman.run("rm", "fw")
    _assert_nothing_left(bed)
    assert not Path("/run/runc/smarter-hybrid", container).exists()


# --- ctr and Docker: a containerd of the test's own ------------------------------------------


@dataclass
class Daemons:
    containerd: Containerd
    netns: str
    processes: Processes


@pytest.fixture(scope="module")
def daemons(bed: Bed) -> Iterator[Daemons]:
    base = bed.work / "containerd"
    layout = ContainerdLayout(base)
    base.mkdir()
    # Only what ctr and dockerd use: no CRI plugin (that is the kubelet's, tested in tests/e2e).
    layout.config.write_text(
        "\n".join(
            [
                "version = 2",
                f"root = {json.dumps(str(layout.root))}",
                f"state = {json.dumps(str(layout.state))}",
                'disabled_plugins = ["io.containerd.grpc.v1.cri",'
                ' "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",'
                ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]',
                "[grpc]",
                f"  address = {json.dumps(str(layout.socket))}",
                '[plugins."io.containerd.internal.v1.opt"]',
                f"  path = {json.dumps(str(base / 'opt'))}",
                "",
            ]
        )
    )
    processes = Processes(bed.work / "logs")
    with network_namespace("se-tools-") as netns:
        containerd = Containerd(layout, processes)
        try:
            containerd.start(netns=netns, env=dict(os.environ))
            yield Daemons(containerd, netns, processes)
        finally:
            processes.stop_all()
            containerd.stop()
            detach_all(base)


def _ctr(daemons: Daemons, *args: str | Path) -> list[str]:
    socket = daemons.containerd.layout.socket
    return ["ctr", "--address", str(socket), "--namespace", "firmware", *map(str, args)]


def test_ctr_run_with_the_runtime_as_runc_binary(bed: Bed, daemons: Daemons) -> None:
    _run(_ctr(daemons, "images", "import", bed.oci_archive))
    runc_root = bed.work / "ctr-runc"
    # The installed path is the test's zipapp; its state goes under the test's directory.
    words = [str(bed.runtime) if word == INSTALLED else word for word in CTR_RUN]
    run = _ctr(daemons, "run", "--runc-root", runc_root, *words[1:])
    try:
        with _attached(run, bed.work, "ctr-run") as (process, output):
            _wait_for_console(output, "ctr")
            assert bed.core_state("remoteproc0") == "running"
            _run(_ctr(daemons, "task", "kill", "fw"))  # SIGTERM
            assert process.wait(timeout=WAIT) == 143
            assert bed.core_state("remoteproc0") == "offline"
        _run(_ctr(daemons, "container", "rm", "fw"))
    finally:
        subprocess.run(_ctr(daemons, "task", "kill", "-s", "KILL", "fw"), capture_output=True)
        subprocess.run(_ctr(daemons, "task", "rm", "-f", "fw"), capture_output=True)
        subprocess.run(_ctr(daemons, "container", "rm", "fw"), capture_output=True)
    _assert_clean_output(output.read_text())
    _assert_nothing_left(bed)
    # The shim gives the runtime --root <runc root>/<namespace>.
    assert (runc_root / "firmware" / "smarter-hybrid").is_dir()
    assert list(runc_root.glob("*/smarter-hybrid/*")) == []


# --- Docker ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker(bed: Bed, daemons: Daemons) -> Iterator[Callable[..., list[str]]]:
    """A dockerd of the test's own on the test's containerd, daemon.json from the installer."""
    _require("dockerd", "docker")
    base = bed.work / "docker"
    host = base / "host"
    daemon_json = host / "etc/docker/daemon.json"
    daemon_json.parent.mkdir(parents=True)
    # A node's own runtime, which must keep working beside ours.
    daemon_json.write_text('{"runtimes": {"runc-debug": {"path": "/usr/sbin/runc"}}}\n')
    status = engine_config.main(["--host-root", str(host), "--binary", str(bed.runtime)])
    assert status == 0
    socket = base / "docker.sock"
    # dockerd writes its trust key and plugin directory where no flag moves them.
    left_before = {
        path: path.exists() for path in (Path("/etc/docker/key.json"), Path("/run/docker"))
    }
    started = daemons.processes.start(
        "dockerd",
        [
            "dockerd",
            "--config-file",
            daemon_json,
            "--data-root",
            base / "data",
            "--exec-root",
            base / "exec",
            "--pidfile",
            base / "docker.pid",
            "--host",
            f"unix://{socket}",
            "--containerd",
            daemons.containerd.layout.socket,
            "--bridge",
            "none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
        ],
        netns=daemons.netns,
    )
    try:
        daemons.processes.wait_for(started, socket.exists, timeout=WAIT, what="open its socket")
        client = ["docker", "--host", f"unix://{socket}"]
        _wait(
            lambda: subprocess.run([*client, "info"], capture_output=True).returncode == 0,
            "dockerd to answer",
        )

        def command(*words: str) -> list[str]:
            return [*client, *words]

        yield command
        subprocess.run(command("rm", "--force", "fw"), capture_output=True, check=False)
    finally:
        daemons.processes.stop(started, grace=20)
        detach_all(base)
        for path, existed in left_before.items():
            if existed:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def test_docker_runs_firmware_with_the_runtime_from_daemon_json(
    bed: Bed, docker: Callable[..., list[str]]
) -> None:
    runtimes = json.loads(_run(docker("info", "--format", "{{json .Runtimes}}")))
    assert {"hybrid", "runc-debug", "runc"} <= set(runtimes)
    _run(docker("load", "--input", str(bed.docker_archive)))
    run = docker(*DOCKER_RUN)
    with _attached(run, bed.work, "docker-run") as (process, output):
        _wait_for_console(output, "docker")
        assert bed.core_state("remoteproc1") == "running"
        _run(docker("stop", "fw"))
        assert process.wait(timeout=WAIT) == 143
        assert bed.core_state("remoteproc1") == "offline"
    logs = _run(docker("logs", "fw"))
    assert CONSOLE_LINE in logs
    _run(docker("rm", "fw"))
    _assert_clean_output(output.read_text() + logs)
    _assert_nothing_left(bed)


def _assert_nothing_left(bed: Bed) -> None:
    assert bed.firmware_files() == []
    assert [pid for pid in _supervisors(bed) if process_alive(pid)] == []


def _supervisors(bed: Bed) -> list[int]:
    """Processes still running the runtime's zipapp (a supervisor left behind)."""
    return pids_with(b"", str(bed.runtime).encode())
