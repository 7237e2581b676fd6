"""Stopping a core's QEMU is prompt: the `stop` write of a board's kernel returns in
milliseconds, and the simulator's must not add its fault watcher's sampling interval."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim import qemu
from sim.boards import core_type
from sim.console import Console
from tests.sim.conftest import firmware


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    made = Console(tmp_path / "ttyRPMSG0")
    yield made
    made.close()


def test_stop_does_not_wait_for_the_fault_watchers_next_sample(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sampling interval far longer than any stop may take: were stop() to wait for the
    # watcher's next sample, it would take about this long.
    monkeypatch.setattr(qemu, "FAULT_POLL_S", 30.0)
    ended: list[str] = []
    run = qemu.QemuRun(
        core_type("cortex-m4"),
        firmware("hello", "cortex-m4"),
        console,
        lambda _run, reason: ended.append(reason),
        core_id="remoteproc0",
    )
    try:
        # Let the watcher connect over QMP and take its first sample, then sleep.
        time.sleep(1.0)
        started = time.monotonic()
        run.stop()
        took = time.monotonic() - started
    finally:
        run.process.kill()
        run.process.wait()
    assert ended == ["stopped"]
    assert took < 5.0, f"stop took {took:.1f} s: it waited for the fault watcher's next sample"
