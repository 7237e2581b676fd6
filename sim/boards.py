"""What the simulator can pretend to be: core types, the QEMU machine for each, and boards.

A board only changes what `/sys/firmware/devicetree/base/{model,compatible}` say, so programs that
read the board name (image labels, node labels) see a familiar one.
"""

from __future__ import annotations

from dataclasses import dataclass

from smarter_common.errors import ConfigError


@dataclass(frozen=True)
class CoreType:
    """A Cortex-M core the simulator can run, and the QEMU machine that has one."""

    cpu: str
    machine: str
    compatible: str


@dataclass(frozen=True)
class Board:
    """A simulated board: its devicetree model and compatible strings."""

    name: str
    model: str
    compatible: tuple[str, ...]


CORE_TYPES: dict[str, CoreType] = {
    core.cpu: core
    for core in (
        CoreType("cortex-m3", "mps2-an385", "arm,cortex-m3"),
        CoreType("cortex-m4", "mps2-an386", "arm,cortex-m4"),
        CoreType("cortex-m7", "mps2-an500", "arm,cortex-m7"),
        CoreType("cortex-m33", "mps2-an505", "arm,cortex-m33"),
    )
}

DEFAULT_BOARD = "smarter-sim"

BOARDS: dict[str, Board] = {
    board.name: board
    for board in (
        Board(DEFAULT_BOARD, "smarter-edge simulated gateway", ("smarter-edge,sim",)),
        Board(
            "stm32mp157c-dk2",
            "STMicroelectronics STM32MP157C-DK2 Discovery Board",
            ("st,stm32mp157c-dk2", "st,stm32mp157"),
        ),
        Board(
            "imx8mm-evk",
            "NXP i.MX8MM EVK board",
            ("fsl,imx8mm-evk", "fsl,imx8mm"),
        ),
    )
}


def core_type(cpu: str) -> CoreType:
    """The core type called `cpu` (`cortex-m4`); ConfigError naming the choices otherwise."""
    try:
        return CORE_TYPES[cpu]
    except KeyError:
        raise ConfigError(
            f"the simulator has no core type {cpu!r}",
            hint=f"use one of {', '.join(CORE_TYPES)}",
        ) from None


def board(name: str | None) -> Board:
    """The board called `name` (None: the default board); ConfigError naming the choices."""
    try:
        return BOARDS[name or DEFAULT_BOARD]
    except KeyError:
        raise ConfigError(
            f"the simulator has no board {name!r}", hint=f"use one of {', '.join(BOARDS)}"
        ) from None
