"""The supervisor's watch over a started core, for the states the simulator never shows.

A board's kernel can also report `detached`, `suspended`, `deleted` or `invalid`; the simulator
only has offline/running/crashed, so these run against a plain host root with a sysfs-like tree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime_handler import state, supervisor
from smarter_common.hostroot import HostRoot
from smarter_common.remoteproc import RemoteCore


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[supervisor.Supervisor, RemoteCore, Path]]:
    sysfs = tmp_path / "host" / "sys" / "class" / "remoteproc" / "remoteproc0"
    sysfs.mkdir(parents=True)
    directory = tmp_path / "container"
    directory.mkdir()
    log = tmp_path / "log.json"
    record = state.ContainerRecord(
        id="fw",
        bundle=str(tmp_path),
        rootfs=str(tmp_path / "rootfs"),
        entrypoint="/firmware.elf",
        core="remoteproc0",
        firmware_name="smarter-fw.elf",
        firmware_dir=str(tmp_path / "host" / "lib" / "firmware"),
        lock_path=str(tmp_path / "lock"),
        host_root=str(tmp_path / "host"),
        log=str(log),
        log_format="json",
        status=state.STATUS_RUNNING,
    )
    read_end, write_end = os.pipe()
    watcher = supervisor.Supervisor(record, directory, read_end, HostRoot(tmp_path / "host"))
    watcher._log = supervisor._logger(record)
    try:
        yield watcher, RemoteCore(index=0, sysfs=sysfs), log
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("current", ["detached", "suspended", "deleted", "invalid"])
def test_core_in_a_state_other_than_running_ends_the_supervisor_non_zero(
    current: str, watched: tuple[supervisor.Supervisor, RemoteCore, Path]
) -> None:
    watcher, core, log = watched
    (core.sysfs / "state").write_text(f"{current}\n")

    code = watcher._watch(core)

    message = f"remoteproc0 is {current} while running smarter-fw.elf"
    assert code == supervisor.EXIT_FAILED
    saved = state.load(watcher.directory)
    assert (saved.status, saved.exit_code, saved.error) == ("stopped", 1, message)
    assert message in [json.loads(line)["msg"] for line in log.read_text().splitlines()]


def test_core_whose_state_cannot_be_read_ends_the_supervisor_non_zero(
    watched: tuple[supervisor.Supervisor, RemoteCore, Path],
) -> None:
    watcher, core, _ = watched  # the directory is there, its state file is not

    assert watcher._watch(core) == supervisor.EXIT_FAILED
    assert state.load(watcher.directory).error == (
        "remoteproc0 has no readable state while running smarter-fw.elf"
    )


def test_attached_core_keeps_the_container_running_until_it_goes_offline(
    watched: tuple[supervisor.Supervisor, RemoteCore, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher, core, _ = watched
    # The watch polls: it sees `attached` a few times, then the core stopped from outside.
    reads = iter(["attached", "attached", "running", "offline"])
    monkeypatch.setattr(supervisor, "read_state", lambda _core: next(reads))

    assert watcher._watch(core) == 0
    assert state.load(watcher.directory).exit_code == 0
