"""Is a container firmware? Its entrypoint decides, with the cheapest test that can say no.

A pod sandbox never is. Most other containers are Linux programs: a peek at the ELF header
(class, machine, type, program interpreter) says so without importing pyelftools. Only a
fixed-address 32-bit ARM executable, or a container that declares itself firmware, is read with
`smarter_common.firmware_elf`.
"""

from __future__ import annotations

from runtime_handler.bundle import Bundle, peek_elf
from runtime_handler.errors import FirmwareRefusedError

# Importing firmware_elf is cheap, but it is only needed once a container looks like firmware.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from smarter_common.firmware_elf import ElfFacts


def classify(bundle: Bundle) -> ElfFacts | None:
    """The firmware's facts if the container is firmware, None if it is for runc.

    A container that declares itself firmware (`Bundle.declares_firmware`) but whose
    entrypoint is missing or not microcontroller firmware is refused with FirmwareRefusedError.
    """
    if bundle.is_sandbox:
        return None
    declared = bundle.declares_firmware
    entry = bundle.entrypoint
    if not entry:
        if declared:
            raise FirmwareRefusedError(
                "firmware container has no process args: expected [/firmware.elf]"
            )
        return None
    path = bundle.entrypoint_path()
    if path is None:
        if declared:
            raise FirmwareRefusedError(
                f"firmware container entrypoint {entry} does not exist in the root filesystem"
                f" {bundle.rootfs}",
                hint="a firmware image holds its ELF at /firmware.elf and names it as entrypoint",
            )
        return None
    is_elf, may_be_firmware = peek_elf(path)
    if not declared and not may_be_firmware:
        return None
    if not is_elf:
        raise FirmwareRefusedError(
            f"firmware container entrypoint {entry} is not an ELF file",
            hint="build the firmware with arm-none-eabi-gcc -mcpu=<core> and package the .elf",
        )
    from pathlib import Path

    from smarter_common.firmware_elf import FirmwareError, check_fits, read_elf_facts

    try:
        facts = read_elf_facts(Path(path))
    except FirmwareError as error:
        if not declared:
            return None
        raise FirmwareRefusedError(error.message.replace(path, entry), hint=error.hint) from None
    facts = _with_path(facts, entry)
    if not facts.is_firmware:
        if not declared:
            return None
        try:
            check_fits(facts, None)
        except FirmwareError as error:
            raise FirmwareRefusedError(error.message, hint=error.hint) from None
    return facts


def _with_path(facts: ElfFacts, container_path: str) -> ElfFacts:
    """The same facts named by the path the container sees, for messages the user recognises."""
    import dataclasses

    return dataclasses.replace(facts, path=container_path)
