"""What a test needs from the machine, written as markers and checked once per marker.

A test marked `netns`, `fuse`, `qemu`, `containerd`, `podman`, `dnsmasq` or `root` (the list and
meanings are in pyproject.toml) is skipped, with the reason naming what is missing, on a machine
without it; `netns`, `fuse`, `containerd` and `podman` imply `root`, so `pytest -m "not root"` is
the subset that runs anywhere (docs/contributing.md). CI sets SMARTER_TEST_REQUIRE_ALL=1: there a
missing tool fails the test instead, so that nothing that ran before is quietly skipped.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE_ALL_ENV = "SMARTER_TEST_REQUIRE_ALL"
ROOT = "root"
# Markers whose tests need root besides their tools: they carry the `root` marker too.
NEEDS_ROOT = frozenset({"netns", "fuse", "containerd", "podman"})
PROGRAMS: dict[str, tuple[str, ...]] = {
    "netns": ("ip",),
    "fuse": ("fusermount3",),
    "qemu": ("qemu-system-arm",),
    "containerd": ("containerd", "containerd-shim-runc-v2", "runc", "ctr"),
    "podman": ("podman", "buildah"),
    "dnsmasq": ("dnsmasq",),
}
DEVICES: dict[str, tuple[str, ...]] = {"fuse": ("/dev/fuse",)}
MARKERS = frozenset({ROOT, *PROGRAMS})


@functools.cache
def missing_for(marker: str) -> tuple[str, ...]:
    """What this machine lacks for tests marked `marker` (empty when it has everything)."""
    missing: list[str] = []
    if (marker == ROOT or marker in NEEDS_ROOT) and os.geteuid() != 0:
        missing.append("root")
    missing += [name for name in PROGRAMS.get(marker, ()) if shutil.which(name) is None]
    missing += [path for path in DEVICES.get(marker, ()) if not Path(path).exists()]
    return tuple(missing)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if ROOT not in _markers(item) and _markers(item) & NEEDS_ROOT:
            item.add_marker(ROOT)


def pytest_runtest_setup(item: pytest.Item) -> None:
    missing = sorted({need for marker in _markers(item) for need in missing_for(marker)})
    if not missing:
        return
    reason = f"needs {', '.join(missing)} (markers: {', '.join(sorted(_markers(item)))})"
    if os.environ.get(REQUIRE_ALL_ENV) == "1":
        pytest.fail(f"{reason}; {REQUIRE_ALL_ENV}=1 forbids skipping: run scripts/setup.sh")
    pytest.skip(reason)


def _markers(item: pytest.Item) -> frozenset[str]:
    return frozenset(mark.name for mark in item.iter_markers()) & MARKERS


@pytest.fixture(autouse=True)
def _logging_set_up_by_a_test_ends_with_it() -> Iterator[None]:
    """Each test starts from structlog's defaults. Code under test sets structlog up for the
    whole process with the stream it is given (sys.stderr by default, which during a test is
    pytest's capture of that test, closed when it ends): a later test logging through it would
    fail with `I/O operation on closed file`."""
    yield
    structlog = sys.modules.get("structlog")
    if structlog is not None:
        structlog.reset_defaults()
    logs = sys.modules.get("smarter_common.logs")
    if logs is not None:
        setattr(logs, "_lazily_configured", False)  # noqa: B010 (a private flag)
