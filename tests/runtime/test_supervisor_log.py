"""The supervisor's runtime-log entries: runc's format, written with the standard library alone.

The supervisor is resident for its container's life; structlog (asyncio, ~10 MB) in it would
cost each firmware container that much memory, and its import, after the core runs, delayed a
`kill` sent right after `start` (issue 16).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import MakeBundle
from .firmware_shim import (  # noqa: F401 (fixtures)
    Shim,
    firmware,
    fw_bundle,
    shim,
    simulator,
    subreaper,
)

# A supervisor's logger as `run` makes it, in a process of its own: what has it imported?
_SUPERVISOR_LOGGER = """
import sys
from runtime_handler import state, supervisor
record = state.ContainerRecord(
    id="fw", bundle="/b", rootfs="/b/rootfs", entrypoint="/firmware.elf", core="remoteproc0",
    firmware_name="smarter-fw.elf", firmware_dir="/lib/firmware", lock_path="/l.lock",
    host_root="/", log=sys.argv[1], log_format=sys.argv[2],
)
log = supervisor._logger(record)
log.info("core_started", firmware=record.firmware_name)
log.debug("not_at_info")
log.error("remoteproc0 crashed running smarter-fw.elf")
print(*(name in sys.modules for name in ("structlog", "asyncio", "logging")), flush=True)
"""


def _run_logger(log: Path, log_format: str) -> list[str]:
    probe = subprocess.run(
        [sys.executable, "-c", _SUPERVISOR_LOGGER, str(log), log_format],
        env={**os.environ, "SMARTER_LOG_LEVEL": "info"},
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    return probe.stdout.split()


def test_supervisor_logs_without_structlog_asyncio_or_logging(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    assert _run_logger(log, "json") == ["False", "False", "False"]
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(entry["level"], entry["msg"]) for entry in entries] == [
        ("info", "core_started"),
        ("error", "remoteproc0 crashed running smarter-fw.elf"),
    ]
    assert list(entries[0]) == [
        "level", "msg", "time", "logger", "container_id", "core", "firmware",
    ]  # fmt: skip
    assert (entries[0]["logger"], entries[0]["container_id"], entries[0]["core"]) == (
        "smarter-hybrid-runtime",
        "fw",
        "remoteproc0",
    )


def test_supervisor_writes_logrus_text_entries_for_log_format_text(tmp_path: Path) -> None:
    log = tmp_path / "log"
    _run_logger(log, "text")
    first, last = log.read_text().splitlines()
    assert first.split(" ", 1)[1] == (
        "level=info msg=core_started logger=smarter-hybrid-runtime container_id=fw"
        " core=remoteproc0 firmware=smarter-fw.elf"
    )
    assert last.split(" ", 1)[1] == (
        'level=error msg="remoteproc0 crashed running smarter-fw.elf"'
        " logger=smarter-hybrid-runtime container_id=fw core=remoteproc0"
    )


def _entries(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_running_firmware_containers_supervisor_never_maps_asyncio(
    shim: Shim,  # noqa: F811 (the fixture)
    simulator: object,  # noqa: F811 (the fixture)
    make_bundle: MakeBundle,
) -> None:
    bundle = fw_bundle(make_bundle, firmware("hello", "cortex-m4"))
    log = bundle / "log.json"
    assert shim.create(bundle, "quiet").returncode == 0
    pid = shim.supervisors["quiet"]
    assert shim.call(bundle, "start", "quiet").returncode == 0
    deadline = time.monotonic() + 10
    while "core_started" not in [entry["msg"] for entry in _entries(log)]:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "_asyncio" not in maps

    assert shim.call(bundle, "kill", "quiet", "TERM").returncode == 0
    assert shim.wait_exit("quiet") == 128 + signal.SIGTERM
    said = [(entry["level"], entry["msg"]) for entry in _entries(log)]
    assert said[-2:] == [("info", "core_stopping"), ("info", "container_exited")]
    assert all(entry["container_id"] == "quiet" for entry in _entries(log))


def test_supervisor_whose_log_cannot_be_opened_fails_before_it_logs(tmp_path: Path) -> None:
    from runtime_handler import state, supervisor

    record = state.ContainerRecord(
        id="fw", bundle=str(tmp_path), rootfs=str(tmp_path / "rootfs"),
        entrypoint="/firmware.elf", core="remoteproc0", firmware_name="smarter-fw.elf",
        firmware_dir=str(tmp_path / "firmware"), lock_path=str(tmp_path / "lock"),
        host_root=str(tmp_path), log=str(tmp_path / "no-such-directory" / "log.json"),
        log_format="json",
    )  # fmt: skip
    with pytest.raises(FileNotFoundError):
        supervisor._logger(record)
