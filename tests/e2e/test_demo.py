"""`python -m testbed.demo` shows the gateway working and leaves nothing behind, also when
interrupted."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from sim.mounts import mounts_under
from smarter_common.procfs import command_line, pids_with

from .conftest import WHOLE_GATEWAY

pytestmark = WHOLE_GATEWAY

REPO = Path(__file__).resolve().parents[2]


def _work_dir(output: str) -> Path:
    match = re.search(r"^work directory: (\S+)$", output, re.MULTILINE)
    assert match, f"the demo did not say where it works:\n{output}"
    return Path(match.group(1))


def _assert_nothing_left(output: str) -> None:
    work = _work_dir(output)
    netns = re.search(r"network namespace (se-node-\w+)", output)
    assert netns, output
    assert not Path("/run/netns", netns.group(1)).exists(), f"{netns.group(1)} is still there"
    assert not work.exists(), f"{work} is still there"
    assert mounts_under(work) == [], f"a mount under {work}"
    left = {pid: command_line(pid) for pid in pids_with(b"", str(work).encode())}
    assert left == {}, f"processes still run: {left}"


def test_demo_shows_pods_names_devices_console_and_data_channel_then_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "testbed.demo", "--console-seconds", "3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert re.search(r"smarter-devices/rproc0\s+1 device\(s\): remoteproc0$", output, re.M), output
    pods = dict(
        re.findall(r"^  (\S+-\w{5})\s+(?:runc|hybrid)\s+(\d+\.\d+\.\d+\.\d+)", output, re.M)
    )
    assert set(pods) == {"client-x8k2p", "sensor-7xk2p", "blinky-4hx9q"}, output
    assert f"nslookup sensor-7xk2p   -> {pods['sensor-7xk2p']}" in output
    assert f"nslookup sensor         -> {pods['sensor-7xk2p']}" in output
    assert re.search(r"^  \| hello from cortex-m4 \d+$", output, re.M), output
    assert "cores: remoteproc0 offline" in output
    assert "blinky-9zz7m: refused: remoteproc0 is reserved by another container" in output
    assert "\n== data channel\n" in output
    assert re.search(r"^  shell \| echo: reading 1$", output, re.M), output
    assert "  shell | channel closed\n" in output
    assert "  shell: exited with code 0 once its channel closed" in output
    assert "  | crashing now" in output
    assert re.search(r"crasher-2kd8w: exited with code [1-9]\d*", output), output
    assert "done: every pod, process, namespace and mount of the gateway is gone" in output
    _assert_nothing_left(output)


def test_ctrl_c_during_the_demo_tears_everything_down(tmp_path: Path) -> None:
    log = tmp_path / "demo.out"
    with log.open("w") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "testbed.demo", "--console-seconds", "60"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            deadline = time.monotonic() + 180
            while "hello from" not in log.read_text():
                assert demo.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            demo.send_signal(signal.SIGINT)
            code = demo.wait(timeout=120)
        finally:
            if demo.poll() is None:  # the test failed: still let the demo tear down first
                demo.send_signal(signal.SIGINT)
                try:
                    demo.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    demo.kill()
                    demo.wait()
    output = log.read_text()
    assert code == 130, output
    assert "interrupted" in output
    assert "done: every pod, process, namespace and mount of the gateway is gone" in output
    _assert_nothing_left(output)
