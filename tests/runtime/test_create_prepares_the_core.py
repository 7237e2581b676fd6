"""A firmware container is set up by `create`, and `start` only runs the core (issue 16).

Once `create` has answered, the supervisor places the firmware and disables the core's
recovery while the caller execs `start`, as the OCI runtime spec has it: `create` sets the
container up, `start` runs the user's process. The core stays offline until `start`; whatever
ends the container before that (`delete`, a killed supervisor) leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from runtime_handler import state
from smarter_common.locks import is_locked

from . import firmware_shim
from .conftest import MakeBundle
from .firmware_shim import Shim, core, core_lock, firmware, fw_bundle

pytestmark = [pytest.mark.fuse, pytest.mark.qemu]

# The firmware containers' fixtures: a simulated gateway, a subreaper, the shim's calls.
simulator = firmware_shim.simulator
subreaper = firmware_shim.subreaper
shim = firmware_shim.shim


def _created(shim: Shim, make_bundle: MakeBundle, container_id: str) -> tuple[Path, Path]:
    """A created container on remoteproc0, whose recovery was `enabled`; its bundle and the
    path its firmware is placed at, once the supervisor has made the core ready."""
    recovery = core(shim.simulator, 0).sysfs / "recovery"
    recovery.write_text("enabled")
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    assert shim.create(bundle, container_id).returncode == 0
    placed = shim.simulator.host.lib_firmware / f"smarter-{container_id}.elf"
    deadline = time.monotonic() + 10.0
    while not (placed.exists() and recovery.read_text().strip() == "disabled"):
        assert time.monotonic() < deadline, "the core was not made ready after create"
        time.sleep(0.01)
    return bundle, placed


def _recovery(shim: Shim) -> str:
    return (core(shim.simulator, 0).sysfs / "recovery").read_text().strip()


def _saved_recovery(shim: Shim) -> list[Path]:
    return list(core_lock(shim.simulator, 0).parent.glob("*.recovery"))


def test_create_places_the_firmware_and_disables_recovery_before_start(
    shim: Shim, make_bundle: MakeBundle
) -> None:
    bundle, placed = _created(shim, make_bundle, "ready")
    m4 = core(shim.simulator, 0)

    assert placed.read_bytes() == (bundle / "rootfs" / "firmware.elf").read_bytes()
    record = state.load(state.container_dir(str(shim.root), "ready"))
    assert record.firmware_placed, "delete must know the file is ours"
    assert (m4.state(), m4.firmware()) != ("running", "smarter-ready.elf")
    assert m4.state() == "offline", "only start runs the core"
    assert shim.state(bundle, "ready")["status"] == "created"

    assert shim.call(bundle, "start", "ready").returncode == 0
    assert (m4.state(), m4.firmware()) == ("running", "smarter-ready.elf")
    assert shim.call(bundle, "kill", "ready", "TERM").returncode == 0
    assert shim.wait_exit("ready") == 128 + signal.SIGTERM
    assert shim.call(bundle, "delete", "ready").returncode == 0
    assert (m4.state(), _recovery(shim)) == ("offline", "enabled")
    assert not placed.exists()


def test_delete_of_a_created_container_undoes_what_create_prepared(
    shim: Shim, make_bundle: MakeBundle
) -> None:
    bundle, placed = _created(shim, make_bundle, "undo")

    deleted = shim.call(bundle, "delete", "undo")

    assert deleted.returncode == 0, deleted.stderr
    assert shim.wait_exit("undo") == 128 + signal.SIGKILL
    assert not placed.exists()
    assert (core(shim.simulator, 0).state(), _recovery(shim)) == ("offline", "enabled")
    assert not _saved_recovery(shim)
    assert not is_locked(core_lock(shim.simulator, 0))
    assert not (shim.root / "smarter-hybrid" / "undo").exists()


def test_a_supervisor_killed_between_create_and_start_leaves_nothing_after_delete(
    shim: Shim, make_bundle: MakeBundle
) -> None:
    bundle, placed = _created(shim, make_bundle, "gone")
    os.kill(shim.supervisors["gone"], signal.SIGKILL)
    assert shim.wait_exit("gone") == -signal.SIGKILL
    assert shim.state(bundle, "gone")["status"] == "stopped"

    deleted = shim.call(bundle, "delete", "gone")

    assert deleted.returncode == 0, deleted.stderr
    assert not placed.exists()
    assert (core(shim.simulator, 0).state(), _recovery(shim)) == ("offline", "enabled")
    assert not _saved_recovery(shim)
    assert not is_locked(core_lock(shim.simulator, 0))
    assert not (shim.root / "smarter-hybrid" / "gone").exists()
