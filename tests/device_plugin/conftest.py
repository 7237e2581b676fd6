"""A host root under /tmp with real device nodes, the daemon as a subprocess, the kubelet."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testbed import kubelet as kubelet_module
from testbed.kubelet import Kubelet

REPO = Path(__file__).resolve().parents[2]
TTY_USB_MAJOR = 188
MEM_MAJOR = 1
SOUND_MAJOR = 116


@dataclass
class HostTree:
    """A host root under /tmp (short: unix socket paths hold at most 107 bytes)."""

    root: Path
    rules: Path = field(init=False)

    def __post_init__(self) -> None:
        self.rules = self.root / "etc/smarter-device-manager/conf.yaml"
        for directory in ("dev", "sys/class/remoteproc", "var/lib/kubelet/device-plugins"):
            (self.root / directory).mkdir(parents=True, exist_ok=True)
        self.rules.parent.mkdir(parents=True)

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    @property
    def plugin_dir(self) -> Path:
        return self.root / "var/lib/kubelet/device-plugins"

    def node(self, relative: str, major: int = TTY_USB_MAJOR, minor: int = 0) -> Path:
        """A real character device node at /dev/<relative>."""
        path = self.dev / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(path, stat.S_IFCHR | 0o660, os.makedev(major, minor))
        return path

    def core(self, index: int, name: str, state: str = "offline") -> Path:
        """The remoteproc sysfs layout of one core, as plain files."""
        sysfs = self.root / f"sys/class/remoteproc/remoteproc{index}"
        sysfs.mkdir(parents=True)
        (sysfs / "name").write_text(f"{name}\n")
        (sysfs / "state").write_text(f"{state}\n")
        (sysfs / "firmware").write_text("\n")
        return sysfs

    def write_rules(self, text: str) -> None:
        """Replace the rules file the way a ConfigMap volume does: new file, then rename."""
        fresh = self.rules.with_name(".conf.yaml.new")
        fresh.write_text(text)
        fresh.rename(self.rules)


@pytest.fixture
def host() -> Iterator[HostTree]:
    root = Path(tempfile.mkdtemp(prefix="sdm", dir="/tmp"))
    try:
        yield HostTree(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def kubelet(host: HostTree) -> Iterator[Kubelet]:
    stand_in = kubelet_module.start(host.plugin_dir)
    try:
        yield stand_in
    finally:
        stand_in.stop()


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text()

    def wait_log(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if needle in text:
                return text
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not logged; log:\n{self.log_text()}")

    def terminate(self, timeout: float = 10.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def daemon_command(host: HostTree, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "device_plugin",
        "--host-root",
        str(host.root),
        "--rules",
        str(host.rules),
        # Never the default: that is the machine's own kubelet directory.
        "--plugin-dir",
        str(host.plugin_dir),
        "--log-format",
        "json",
        *extra,
    ]


@pytest.fixture
def start_daemon(host: HostTree) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(*extra: str) -> Daemon:
        log = host.root / f"daemon-{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                daemon_command(host, *extra), cwd=REPO, stdout=out, stderr=subprocess.STDOUT
            )
        daemon = Daemon(process, log)
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            if daemon.process.poll() is None:
                os.kill(daemon.process.pid, signal.SIGKILL)
                daemon.process.wait()
