"""Choosing a core for firmware: every refusal says what was expected and what was found."""

from __future__ import annotations

import pytest

from runtime_handler.core_select import BoardView, CoreView, check_board, choose_core
from runtime_handler.errors import FirmwareRefusedError
from smarter_common.firmware_elf import ElfFacts


def firmware(arch: str = "v7E-M", cpu: str = "cortex-m4") -> ElfFacts:
    return ElfFacts(
        path="/firmware.elf",
        elf_class=32,
        machine="EM_ARM",
        arch=arch,
        profile="M",
        cpu_name=cpu,
        entry=0x101,
    )


def core(
    index: int, cpu: str = "cortex-m4", state: str = "offline", reserved: bool = False
) -> CoreView:
    return CoreView(f"remoteproc{index}", cpu, state, reserved)


def test_first_free_core_that_runs_the_firmware() -> None:
    cores = [core(0, "cortex-m3"), core(1, state="running"), core(2, reserved=True), core(3)]
    assert choose_core(firmware(), cores).device_id == "remoteproc3"


def test_a_crashed_core_is_free_for_the_next_container() -> None:
    assert choose_core(firmware(), [core(0, state="crashed")]).device_id == "remoteproc0"


def test_an_offline_core_is_preferred_over_a_crashed_one() -> None:
    cores = [core(0, state="crashed"), core(1, "cortex-m3"), core(2), core(3, state="crashed")]
    assert choose_core(firmware(), cores).device_id == "remoteproc2"


def test_no_fitting_core_names_each_core_and_why() -> None:
    cores = [core(0, "cortex-m3"), core(1, state="running"), core(2, reserved=True)]
    with pytest.raises(FirmwareRefusedError) as refused:
        choose_core(firmware(), cores)
    message = str(refused.value)
    assert "no free core runs /firmware.elf (built for ARM v7E-M (cortex-m4))" in message
    assert (
        "remoteproc0: /firmware.elf is built for ARM v7E-M (cortex-m4), but the core is a"
        in message
    )
    assert "cortex-m3, which runs v6-M, v6S-M, v7-M" in message
    assert "remoteproc1 is running, expected offline" in message
    assert "remoteproc2 is reserved by another container" in message


def test_no_cores_at_all() -> None:
    with pytest.raises(FirmwareRefusedError, match="no remote cores on this host"):
        choose_core(firmware(), [])


def test_requested_core_is_used_even_when_another_comes_first() -> None:
    cores = [core(0), core(1)]
    assert choose_core(firmware(), cores, "remoteproc1").device_id == "remoteproc1"


def test_requested_core_that_does_not_exist() -> None:
    with pytest.raises(FirmwareRefusedError) as refused:
        choose_core(firmware(), [core(0), core(1)], "remoteproc7")
    assert str(refused.value).startswith(
        "SMARTER_RPROC=remoteproc7 names a core that does not exist;"
        " this host's cores: remoteproc0, remoteproc1"
    )


def test_requested_core_of_the_wrong_type() -> None:
    with pytest.raises(FirmwareRefusedError, match=r"remoteproc0: .* the core is a cortex-m3"):
        choose_core(firmware(), [core(0, "cortex-m3"), core(1)], "remoteproc0")


def test_requested_core_that_is_busy() -> None:
    with pytest.raises(FirmwareRefusedError, match="remoteproc0 is reserved by another container"):
        choose_core(firmware(), [core(0, reserved=True), core(1)], "remoteproc0")


def test_older_architecture_runs_on_newer_core() -> None:
    m3 = firmware("v7-M", "cortex-m3")
    assert choose_core(m3, [core(0, "cortex-m33")]).device_id == "remoteproc0"


BOARD = BoardView(
    "STMicroelectronics STM32MP157C-DK2 Discovery Board", ("st,stm32mp157c-dk2", "st,stm32mp157")
)


@pytest.mark.parametrize(
    "wanted",
    [
        None,
        "stm32mp157c-dk2",
        "st,stm32mp157",
        "STMicroelectronics STM32MP157C-DK2 Discovery Board",
    ],
)
def test_board_matches_compatible_or_model(wanted: str | None) -> None:
    check_board(wanted, BOARD)


def test_other_board_is_refused_naming_both() -> None:
    with pytest.raises(FirmwareRefusedError) as refused:
        check_board("imx8mm-evk", BOARD)
    assert str(refused.value).startswith(
        "firmware is for board 'imx8mm-evk', but this board is"
        " 'STMicroelectronics STM32MP157C-DK2 Discovery Board'"
        " (st,stm32mp157c-dk2, st,stm32mp157)"
    )
