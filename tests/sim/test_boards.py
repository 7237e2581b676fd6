"""The simulator's core and board tables and their refusals."""

from __future__ import annotations

import pytest

from sim import boards
from smarter_common.errors import ConfigError
from smarter_common.firmware_elf import CORE_RUNS


def test_every_core_type_runs_on_its_own_mps2_machine() -> None:
    machines = {cpu: core.machine for cpu, core in boards.CORE_TYPES.items()}

    assert machines == {
        "cortex-m3": "mps2-an385",
        "cortex-m4": "mps2-an386",
        "cortex-m7": "mps2-an500",
        "cortex-m33": "mps2-an505",
    }
    assert set(machines) <= set(CORE_RUNS)


def test_no_board_name_means_the_default_board() -> None:
    assert boards.board(None).name == boards.DEFAULT_BOARD


def test_an_unknown_board_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError) as refused:
        boards.board("rpi4")

    assert refused.value.message == "the simulator has no board 'rpi4'"
    assert refused.value.hint == "use one of smarter-sim, stm32mp157c-dk2, imx8mm-evk"
