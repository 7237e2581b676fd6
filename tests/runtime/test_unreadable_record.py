"""A firmware container whose record (state.json) cannot be read: each command's answer.

runc answers `state`, `start`, `kill` (with `--all` too) and `delete` of a container whose
state.json is corrupt with the decoding error and exit 1 (libcontainer's loadState), and so do
we, in our words: one error entry in the `--log` file, one stderr line, no traceback. runc's
`delete --force` refuses too, and the kubelet then retries it forever; ours ends the
container's supervisor and removes what it can find, so nothing of the container is left.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from runtime_handler import state
from smarter_common.locks import is_locked

from . import firmware_shim
from .conftest import MakeBundle, log_messages, runtime
from .firmware_shim import Shim, core, core_lock, firmware, fw_bundle

# The firmware containers' fixtures: a simulated gateway, a subreaper, the shim's calls.
simulator = firmware_shim.simulator
subreaper = firmware_shim.subreaper
shim = firmware_shim.shim

HINT = "(`delete --force` ends the container and removes it)"
CUT_SHORT = '{"id": "fw", "bund'


def _broken_container(root: Path, container_id: str, content: str = CUT_SHORT) -> Path:
    """A container directory as a crash leaves it: a record cut short, no supervisor."""
    directory = Path(state.container_dir(str(root), container_id))
    directory.mkdir(parents=True)
    (directory / state.RECORD_FILE).write_text(content)
    return directory


def _call(root: Path, log: Path, *args: str) -> tuple[int, list[str], str]:
    result = runtime("--root", str(root), "--log", str(log), "--log-format", "json", *args)
    return result.returncode, log_messages(log), result.stderr


COMMANDS = {
    "state": ["state", "fw"],
    "start": ["start", "fw"],
    "kill": ["kill", "fw", "KILL"],
    "kill --all": ["kill", "--all", "fw", "KILL"],  # runc: getContainer fails before --all counts
    "delete": ["delete", "fw"],
    "ps": ["ps", "fw"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_command_on_an_unreadable_record_is_refused_in_runcs_way_naming_the_file(
    tmp_path: Path, command: str
) -> None:
    directory = _broken_container(tmp_path, "fw")
    log = tmp_path / "log.json"

    code, messages, stderr = _call(tmp_path, log, *COMMANDS[command])

    record = directory / state.RECORD_FILE
    expected = (
        f"container state {record} is unreadable: not JSON: Unterminated string starting at:"
        f" line 1 column 14 (char 13) {HINT}"
    )
    assert (code, messages, stderr) == (1, [expected], expected + "\n")
    assert record.read_text() == CUT_SHORT, "a refusal changes nothing"


def test_a_record_of_the_wrong_shape_is_refused_naming_the_field(tmp_path: Path) -> None:
    directory = _broken_container(tmp_path, "fw", '{"id": "fw", "pid": "12"}')

    code, messages, _ = _call(tmp_path, tmp_path / "log.json", "state", "fw")

    assert code == 1
    assert messages == [
        f"container state {directory / state.RECORD_FILE} is unreadable: missing fields"
        " 'bundle', 'rootfs', 'entrypoint', 'core', 'firmware_name', 'firmware_dir',"
        f" 'lock_path', 'host_root', 'log', 'log_format' {HINT}"
    ]


def test_without_a_log_file_the_refusal_is_one_stderr_entry(tmp_path: Path) -> None:
    _broken_container(tmp_path, "fw", "[]")

    result = runtime("--root", str(tmp_path), "--log-format", "json", "kill", "fw")

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "is unreadable: a JSON array where an object is expected" in line
    assert '"level":"error"' in line.replace(" ", "")


def test_delete_force_of_an_unreadable_record_without_supervisor_leaves_nothing(
    tmp_path: Path,
) -> None:
    directory = _broken_container(tmp_path, "fw", "")
    pods = Path(state.containers_dir(str(tmp_path))) / ".@pods"
    (pods / "pod-a").mkdir(parents=True)
    (pods / "pod-a" / "fw").touch()
    (pods / "pod-b").mkdir()
    (pods / "pod-b" / "other").touch()
    log = tmp_path / "log.json"

    assert _call(tmp_path, log, "delete", "--force", "fw") == (0, [], "")

    assert not directory.exists()
    assert not (pods / "pod-a").exists()
    assert (pods / "pod-b" / "other").exists(), "another container's mark stays"
    assert _call(tmp_path, log, "delete", "--force", "fw") == (0, [], ""), "and again"


@pytest.mark.fuse
@pytest.mark.qemu
def test_delete_force_of_a_running_container_with_an_unreadable_record_frees_its_core(
    shim: Shim, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(
        make_bundle, firmware("hello", "cortex-m3"), env=["SMARTER_RPROC=remoteproc1"]
    )
    assert shim.create(bundle, "cut").returncode == 0
    assert shim.call(bundle, "start", "cut").returncode == 0
    assert core(shim.simulator, 1).state() == "running"
    record = shim.root / "smarter-hybrid" / "cut" / state.RECORD_FILE
    record.write_text(record.read_text()[:40])  # a full disk's truncation
    assert shim.call(bundle, "state", "cut").returncode == 1

    deleted = shim.call(bundle, "delete", "--force", "cut")

    assert deleted.returncode == 0, deleted.stderr
    assert shim.wait_exit("cut") == 128 + signal.SIGKILL
    assert core(shim.simulator, 1).state() == "offline"
    assert not is_locked(core_lock(shim.simulator, 1))
    assert not record.parent.exists()
    assert not (shim.simulator.host.lib_firmware / "smarter-cut.elf").exists()


@pytest.mark.fuse
@pytest.mark.qemu
def test_delete_force_ends_a_supervisor_that_no_longer_reads_its_fifo(
    shim: Shim, make_bundle: MakeBundle
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    assert shim.create(bundle, "hung").returncode == 0
    (shim.root / "smarter-hybrid" / "hung" / state.RECORD_FILE).write_text("{")
    supervisor = shim.supervisors["hung"]
    os.kill(supervisor, signal.SIGSTOP)  # hung: reads nothing, holds the core's lock
    try:
        deleted = shim.call(bundle, "delete", "--force", "hung")
    finally:
        os.kill(supervisor, signal.SIGCONT)

    assert deleted.returncode == 0, deleted.stderr
    assert shim.wait_exit("hung") == -signal.SIGKILL
    assert not is_locked(core_lock(shim.simulator, 0))
    assert not (shim.root / "smarter-hybrid" / "hung").exists()


@pytest.mark.fuse
@pytest.mark.qemu
def test_delete_force_after_a_sigkilled_supervisor_stops_the_core_running_its_firmware(
    shim: Shim, make_bundle: MakeBundle
) -> None:
    m3 = core(shim.simulator, 1)
    recovery = m3.sysfs / "recovery"
    recovery.write_text("enabled")
    bundle = fw_bundle(
        make_bundle, firmware("hello", "cortex-m3"), env=["SMARTER_RPROC=remoteproc1"]
    )
    assert shim.create(bundle, "orphan").returncode == 0
    assert shim.call(bundle, "start", "orphan").returncode == 0
    record = shim.root / "smarter-hybrid" / "orphan" / state.RECORD_FILE
    record.write_text(record.read_text()[:40])
    # A supervisor killed outright stops nothing: the core runs on, with recovery disabled.
    os.kill(shim.supervisors["orphan"], signal.SIGKILL)
    assert shim.wait_exit("orphan") == -signal.SIGKILL
    assert (m3.state(), recovery.read_text().strip()) == ("running", "disabled")

    deleted = shim.call(bundle, "delete", "--force", "orphan")

    assert deleted.returncode == 0, deleted.stderr
    assert (m3.state(), recovery.read_text().strip()) == ("offline", "enabled")
    assert not list(core_lock(shim.simulator, 1).parent.glob("*.recovery"))
    assert not is_locked(core_lock(shim.simulator, 1))
    assert not record.parent.exists()
