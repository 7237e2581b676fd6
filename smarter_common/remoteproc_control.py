"""The remote-core contract, writing side: driving a core through sysfs, as the kernel allows.

Each refusal the kernel gives a sysfs write is a `Refusal` here (attribute, errno, what it
means for the operator). The hybrid runtime translates a failed write with this table; the
simulator, which plays the kernel, raises exactly these errnos, so the two cannot drift.
The kernel's rules (drivers/remoteproc/remoteproc_sysfs.c): `firmware` changes only while the
core is offline; `stop` is taken only from a running or attached core, so a crashed core is
first recovered (`recover` boots the same firmware again), then stopped.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from smarter_common.atomic import write_atomic
from smarter_common.deadline import Deadline, wait_until
from smarter_common.errors import SmarterError
from smarter_common.remoteproc import (
    ATTR_FIRMWARE,
    ATTR_RECOVERY,
    ATTR_STATE,
    COMMAND_START,
    COMMAND_STOP,
    IDLE_STATES,
    LIVE_STATES,
    RECOVERY_DISABLED,
    RECOVERY_RECOVER,
    STATE_CRASHED,
    STATE_OFFLINE,
    RemoteCore,
    read_recovery,
    read_state,
)

STOP_TIMEOUT = 10.0
_POLL_SECONDS = 0.01


class RemoteCoreError(SmarterError):
    """A remote core would not take the firmware, start, stop or recover."""


@dataclass(frozen=True)
class Refusal:
    """One way the kernel refuses a write to a core's attribute, and what that means."""

    attribute: str
    errno: int
    # `{firmware}` stands for the core's firmware file name.
    meaning: str


FIRMWARE_WHILE_RUNNING = Refusal(
    ATTR_FIRMWARE, errno.EBUSY, "the core is running, its firmware cannot change (EBUSY)"
)
FIRMWARE_EMPTY = Refusal(ATTR_FIRMWARE, errno.EINVAL, "the firmware name is empty (EINVAL)")
START_NO_FILE = Refusal(ATTR_STATE, errno.ENOENT, "the firmware loader found no file {firmware!r}")
START_WHILE_BUSY = Refusal(ATTR_STATE, errno.EBUSY, "the core is already running (EBUSY)")
# The kernel answers EINVAL alike for a firmware the core rejects, a `stop` on a core that is
# not running, and a command it does not know.
STATE_REJECTED = Refusal(
    ATTR_STATE, errno.EINVAL, "the core rejected the firmware or the request (EINVAL)"
)
RECOVERY_REJECTED = Refusal(
    ATTR_RECOVERY, errno.EINVAL, "the kernel does not take this recovery command (EINVAL)"
)
REFUSALS: Sequence[Refusal] = (
    FIRMWARE_WHILE_RUNNING,
    FIRMWARE_EMPTY,
    START_NO_FILE,
    START_WHILE_BUSY,
    STATE_REJECTED,
    RECOVERY_REJECTED,
)
_MEANINGS = {(refusal.attribute, refusal.errno): refusal.meaning for refusal in REFUSALS}


class Log(Protocol):
    """What this module says through a logger (the supervisor's RuncLogger, or structlog's)."""

    def warning(self, event: str, **fields: object) -> object: ...


def meaning_of(attribute: str, code: int | None, *, firmware: str) -> str | None:
    """What the kernel's `code` for a write to `attribute` means; None when it has no meaning
    of its own (the caller says the errno's text)."""
    meaning = _MEANINGS.get((attribute, code)) if code is not None else None
    return None if meaning is None else meaning.format(firmware=firmware)


def write_attribute(core: RemoteCore, attribute: str, value: str) -> None:
    """Write `value` to the core's `attribute` in one write(2), as the kernel wants it;
    RemoteCoreError says what the kernel's refusal means."""
    path = core.sysfs / attribute
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as error:
        firmware = core.firmware() if attribute == ATTR_STATE else value
        meaning = meaning_of(attribute, error.errno, firmware=firmware)
        raise RemoteCoreError(
            f"writing {value!r} to {core.device_id}/{attribute} failed: "
            + (meaning or error.strerror or str(error))
        ) from None


def start_core(core: RemoteCore, firmware_name: str) -> None:
    """Name the firmware and start the core (a crashed core is stopped first: it keeps its old
    firmware until it is offline again). Does not wait for `running`."""
    if read_state(core) == STATE_CRASHED:
        stop_core(core)
    write_attribute(core, ATTR_FIRMWARE, firmware_name)
    write_attribute(core, ATTR_STATE, COMMAND_START)


def wait_for_state(core: RemoteCore, wanted: Sequence[str], timeout: float) -> str:
    """The core's state once it is one of `wanted`, or whatever it is when `timeout` ends."""
    deadline = Deadline(timeout)
    current = read_state(core)
    while current not in wanted and not deadline.expired():
        deadline.sleep(_POLL_SECONDS)
        current = read_state(core)
    return current


def stop_core(core: RemoteCore, *, timeout: float = STOP_TIMEOUT) -> None:
    """Bring the core to offline; a core already offline is fine.

    The kernel takes `stop` only from a running (or attached) core: on a crashed one it is
    EINVAL. Such a core is recovered first (`recover` to its `recovery` attribute boots the
    same firmware again), then stopped.
    """
    deadline = Deadline(timeout)
    while True:
        current = read_state(core)
        if current == STATE_OFFLINE:
            return
        if current == STATE_CRASHED:
            _recover(core, deadline)
            continue
        try:
            write_attribute(core, ATTR_STATE, COMMAND_STOP)
        except RemoteCoreError:
            current = read_state(core)
            if current in LIVE_STATES:
                raise
            if current == STATE_CRASHED and not deadline.expired():
                continue  # crashed again between recovery and stop
            if current not in IDLE_STATES:
                return  # detached, deleted...: nothing a stop can change
        if not wait_until(
            lambda: read_state(core) not in LIVE_STATES, deadline.remaining(), _POLL_SECONDS
        ):
            raise RemoteCoreError(f"{core.device_id} did not stop within {timeout:g}s")
        if read_state(core) != STATE_CRASHED:
            return


def _recover(core: RemoteCore, deadline: Deadline) -> None:
    """Get a crashed core out of `crashed` the way the kernel allows: trigger its recovery."""
    if not core.has_recovery():
        raise RemoteCoreError(
            f"{core.device_id} crashed and cannot be stopped: the kernel refuses stop on a"
            " crashed core (EINVAL) and this one has no recovery attribute",
            hint="reload the remoteproc driver or reboot to use the core again",
        )
    write_attribute(core, ATTR_RECOVERY, RECOVERY_RECOVER)
    if not wait_until(
        lambda: read_state(core) != STATE_CRASHED, deadline.remaining(), _POLL_SECONDS
    ):
        raise RemoteCoreError(f"{core.device_id} stayed crashed after recovery was triggered")


def disable_recovery(core: RemoteCore, saved: Path, log: Log) -> None:
    """Keep the kernel from restarting a crashed firmware by itself (its default), keeping the
    value found in `saved` (unless an earlier value is kept there already) for
    `restore_recovery`. A kernel that refuses is logged: the core still runs."""
    if not core.has_recovery():
        return
    found = read_recovery(core)
    if found and not saved.exists():
        with contextlib.suppress(OSError):
            # Kept under the host's /run, which a reboot empties: an fsync would buy nothing
            # and costs the start of every firmware container.
            write_atomic(saved, found + "\n", durable=False)
    try:
        write_attribute(core, ATTR_RECOVERY, RECOVERY_DISABLED)
    except RemoteCoreError as error:
        log.warning("recovery_stays_enabled", core=core.device_id, error=str(error))


def restore_recovery(core: RemoteCore, saved: Path) -> None:
    """Put back the `recovery` value kept in `saved`, once the core is offline (enabling
    recovery on a crashed core would reboot the old firmware)."""
    try:
        value = saved.read_text().strip()
    except OSError:
        return
    if read_state(core) != STATE_OFFLINE:
        return
    with contextlib.suppress(RemoteCoreError):
        write_attribute(core, ATTR_RECOVERY, value)
    saved.unlink(missing_ok=True)
