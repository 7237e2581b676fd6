"""`create` -> core `running` (issue 16): what `start` and a waiting supervisor pay for.

`start` runs between `create` and a running core, so it imports only what it needs; the
supervisor says its first log entry once the record says running (its entries need no
structlog at all: tests/runtime/test_supervisor_log.py).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime_handler import state

from .conftest import MakeBundle, log_messages
from .firmware_shim import (  # noqa: F401 (fixtures)
    Shim,
    firmware,
    fw_bundle,
    shim,
    simulator,
    subreaper,
)

# What only `create` and `delete` use; `start` pays for every import before the core starts.
_NOT_FOR_START = (
    "runtime_handler.supervisor",
    "runtime_handler.data_channels",
    "runtime_handler.core_select",
    "runtime_handler.elf_check",
    "smarter_common.firmware_elf",
    "smarter_common.locks",
    "smarter_common.remoteproc",
    "smarter_common.remoteproc_control",
)
# `main` as the runtime's executable runs it, then the exit code and the modules it imported.
_PROBE = (
    "import sys\n"
    "from runtime_handler.__main__ import main\n"
    "code = main(sys.argv[1:])\n"
    "print(code, *sorted(sys.modules))\n"
)


def test_start_of_a_firmware_container_imports_only_what_start_needs(
    shim: Shim,  # noqa: F811 (the fixture)
    simulator: object,  # noqa: F811 (the fixture)
    make_bundle: MakeBundle,
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    assert shim.create(bundle, "lean").returncode == 0
    argv = [*shim.globals_for(bundle), "start", "lean"]
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        env=dict(shim.env), capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    code, *imported = probe.stdout.split()
    assert code == "0", log_messages(bundle / "log.json")
    assert "runtime_handler.firmware_commands" in imported, "the probe did not see start"
    assert not sorted(set(imported) & {*_NOT_FOR_START, "structlog"})
    assert shim.state(bundle, "lean")["status"] == "running"
    assert shim.call(bundle, "kill", "lean", "TERM").returncode == 0
    assert shim.wait_exit("lean") == 128 + signal.SIGTERM


class _FirstEntrySpy:
    """A logger that notes what the container's saved record said at its first entry."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.status_at_first_entry: str | None = None
        self.events: list[str] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def entry(event: str, **_fields: object) -> None:
            if not self.events:
                self.status_at_first_entry = state.load(self.directory).status
            self.events.append(event)

        return entry


def test_supervisor_says_its_first_entry_once_the_record_says_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime_handler import supervisor
    from smarter_common.hostroot import HostRoot
    from smarter_common.remoteproc import RemoteCore

    console = tmp_path / "ttyRPMSG0"
    console.write_bytes(b"")
    sysfs = tmp_path / "sys" / "remoteproc0"
    sysfs.mkdir(parents=True)
    directory = tmp_path / "container"
    directory.mkdir()
    record = state.ContainerRecord(
        id="fw",
        bundle=str(tmp_path),
        rootfs=str(tmp_path / "rootfs"),
        entrypoint="/firmware.elf",
        core="remoteproc0",
        firmware_name="smarter-fw.elf",
        firmware_dir=str(tmp_path / "firmware"),
        lock_path=str(tmp_path / "lock"),
        host_root=str(tmp_path),
        log=None,
        log_format="json",
    )
    state.save(directory, record)
    core = RemoteCore(index=0, sysfs=sysfs)
    # The core's side is the simulator's elsewhere; here only the order of what _start does.
    monkeypatch.setattr(supervisor, "core_by_id", lambda _host, _id: core)
    monkeypatch.setattr(supervisor.Supervisor, "_place_firmware", lambda _self: None)
    monkeypatch.setattr(supervisor, "disable_recovery", lambda _core, _saved, _log: None)
    monkeypatch.setattr(supervisor, "start_core", lambda _core, _name: None)
    monkeypatch.setattr(supervisor, "wait_for_state", lambda _core, _wanted, _timeout: "running")
    monkeypatch.setattr(supervisor, "wait_for_console", lambda _host, _core, _timeout: console)
    watcher = supervisor.Supervisor(record, directory, -1, HostRoot(tmp_path))
    spy = _FirstEntrySpy(directory)
    watcher._log = spy
    try:
        watcher._start()
    finally:
        watcher._drain_console()

    assert spy.events == ["console", "core_started"]
    assert spy.status_at_first_entry == state.STATUS_RUNNING
