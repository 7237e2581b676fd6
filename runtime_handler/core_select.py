"""Which remote core a firmware container gets, decided from a snapshot of the cores (pure).

The rules: a core named by `SMARTER_RPROC` (the device manager's allocation) must exist, be
free and run the firmware's architecture; without it, the first free `offline` core that runs
it, else the first free `crashed` one. A core is free when no container holds its reservation
and it is not running (`offline`, or `crashed` after a previous container's firmware faulted).
A crashed core is the second choice because the kernel will not simply stop it (EINVAL): it
must be recovered, rerunning the faulted firmware for a moment, before it takes new firmware.
A board the container asks for must be the devicetree's model or one of its compatible strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runtime_handler.errors import FirmwareRefusedError
from smarter_common.firmware_elf import ElfFacts, FirmwareError, check_fits
from smarter_common.remoteproc import ENV_RPROC, IDLE_STATES, STATE_OFFLINE


@dataclass(frozen=True)
class CoreView:
    """One core as seen at `create`."""

    device_id: str
    cpu: str | None
    state: str
    reserved: bool
    firmware: str = ""

    def describe(self) -> str:
        return f"{self.device_id} ({self.cpu or 'unknown cpu'})"

    @property
    def free(self) -> bool:
        return not self.reserved and self.state in IDLE_STATES

    def why_busy(self) -> str:
        if self.reserved:
            return f"{self.device_id} is reserved by another container"
        running = f" firmware {self.firmware}" if self.firmware else ""
        current = self.state or "in an unknown state"
        return f"{self.device_id} is {current}{running}, expected offline"


@dataclass(frozen=True)
class BoardView:
    """The board as the devicetree names it (`smarter_common.remoteproc.read_board`)."""

    model: str
    compatible: tuple[str, ...]


def check_board(wanted: str | None, board: BoardView) -> None:
    """FirmwareRefusedError unless `wanted` names this board (None: any board will do).

    `stm32mp157c-dk2` matches the compatible string `st,stm32mp157c-dk2`; the model matches
    whole, ignoring case.
    """
    if wanted is None:
        return
    want = wanted.strip().lower()
    names = {board.model.strip().lower()}
    for value in board.compatible:
        names.add(value.lower())
        names.add(value.lower().partition(",")[2])
    if want in names:
        return
    found = ", ".join(board.compatible) or "no compatible strings"
    raise FirmwareRefusedError(
        f"firmware is for board {wanted!r}, but this board is {board.model or 'unnamed'!r}"
        f" ({found})",
        hint="schedule the pod on a node with that board (nodeSelector) or rebuild the firmware",
    )


def choose_core(
    facts: ElfFacts, cores: Sequence[CoreView], requested: str | None = None
) -> CoreView:
    """The core for `facts`' firmware; FirmwareRefusedError says what was expected and found."""
    if requested is not None:
        return _check_requested(facts, cores, requested)
    if not cores:
        raise FirmwareRefusedError(
            "no remote cores on this host (nothing under /sys/class/remoteproc)",
            hint="run firmware containers on a node with remote cores",
        )
    reasons = []
    fallback: CoreView | None = None
    for core in cores:
        fits = _fit_problem(facts, core)
        if fits is None and core.free:
            if core.state == STATE_OFFLINE:
                return core
            fallback = fallback or core
            continue
        reasons.append(fits if fits is not None else core.why_busy())
    if fallback is not None:
        return fallback
    raise FirmwareRefusedError(
        f"no free core runs {facts.path} (built for {facts.describe()}): " + "; ".join(reasons)
    )


def _check_requested(facts: ElfFacts, cores: Sequence[CoreView], requested: str) -> CoreView:
    for core in cores:
        if core.device_id == requested:
            break
    else:
        present = ", ".join(core.device_id for core in cores) or "none"
        raise FirmwareRefusedError(
            f"{ENV_RPROC}={requested} names a core that does not exist;"
            f" this host's cores: {present}",
            hint=f"the device manager sets {ENV_RPROC}; request smarter-devices/rprocN",
        )
    try:
        check_fits(facts, core.cpu)
    except FirmwareError as error:
        raise FirmwareRefusedError(f"{core.device_id}: {error.message}", hint=error.hint) from None
    if not core.free:
        raise FirmwareRefusedError(core.why_busy())
    return core


def _fit_problem(facts: ElfFacts, core: CoreView) -> str | None:
    try:
        check_fits(facts, core.cpu)
    except FirmwareError as error:
        return f"{core.device_id}: {error.message}"
    return None
