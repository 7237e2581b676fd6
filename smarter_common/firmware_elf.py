"""What a firmware ELF is built for, and whether a remote core can run it.

Read with pyelftools: the ELF header (`e_machine`, class) and the ARM build attributes
(`.ARM.attributes`: `Tag_CPU_arch`, `Tag_CPU_arch_profile`, `Tag_CPU_name`), which the compiler
writes from `-mcpu`/`-march`. Both the simulated gateway and the hybrid runtime decide with this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smarter_common.errors import SmarterError

ELF_MAGIC = b"\x7fELF"

# Tag_CPU_arch values (ARM ELF ABI addenda), before the profile refines v7.
_CPU_ARCH = {
    0: "pre-v4",
    1: "v4",
    2: "v4T",
    3: "v5T",
    4: "v5TE",
    5: "v5TEJ",
    6: "v6",
    7: "v6KZ",
    8: "v6T2",
    9: "v6K",
    10: "v7",
    11: "v6-M",
    12: "v6S-M",
    13: "v7E-M",
    14: "v8-A",
    15: "v8-R",
    16: "v8-M.baseline",
    17: "v8-M.main",
    18: "v8.1-A",
    19: "v8.2-A",
    20: "v8.3-A",
    21: "v8.1-M.main",
    22: "v9-A",
}
_PROFILES = {ord("A"): "A", ord("R"): "R", ord("M"): "M", ord("S"): "A"}
_MICROCONTROLLER_ARCHS = {
    "v6-M",
    "v6S-M",
    "v7-M",
    "v7E-M",
    "v8-M.baseline",
    "v8-M.main",
    "v8.1-M.main",
}

_V6M = {"v6-M", "v6S-M"}
_V7M = _V6M | {"v7-M"}
_V7EM = _V7M | {"v7E-M"}
_V8M_BASE = _V6M | {"v8-M.baseline"}
_V8M_MAIN = _V7EM | _V8M_BASE | {"v8-M.main"}
_V81M_MAIN = _V8M_MAIN | {"v8.1-M.main"}
_V7R = {"v7-R"}
_V8R = _V7R | {"v8-R"}

# Which architectures' code each core executes.
CORE_RUNS: dict[str, frozenset[str]] = {
    "cortex-m0": frozenset(_V6M),
    "cortex-m0plus": frozenset(_V6M),
    "cortex-m1": frozenset(_V6M),
    "cortex-m3": frozenset(_V7M),
    "cortex-m4": frozenset(_V7EM),
    "cortex-m7": frozenset(_V7EM),
    "cortex-m23": frozenset(_V8M_BASE),
    "cortex-m33": frozenset(_V8M_MAIN),
    "cortex-m35p": frozenset(_V8M_MAIN),
    "cortex-m55": frozenset(_V81M_MAIN),
    "cortex-m85": frozenset(_V81M_MAIN),
    "cortex-r4": frozenset(_V7R),
    "cortex-r5": frozenset(_V7R),
    "cortex-r7": frozenset(_V7R),
    "cortex-r8": frozenset(_V7R),
    "cortex-r52": frozenset(_V8R),
    "cortex-r82": frozenset(_V8R),
}


class FirmwareError(SmarterError):
    """A file is not firmware a remote core can run."""


@dataclass(frozen=True)
class ElfFacts:
    """What the ELF header and ARM build attributes say about a binary."""

    path: str
    elf_class: int
    machine: str
    arch: str | None
    profile: str | None
    cpu_name: str | None
    entry: int

    @property
    def is_firmware(self) -> bool:
        """32-bit ARM built for a microcontroller (M) or real-time (R) profile."""
        if self.machine != "EM_ARM" or self.elf_class != 32:
            return False
        return self.profile in ("M", "R") or self.arch in _MICROCONTROLLER_ARCHS

    def describe(self) -> str:
        if self.machine != "EM_ARM":
            return f"a {self.elf_class}-bit {self.machine.removeprefix('EM_')} ELF"
        parts = [f"ARM {self.arch}" if self.arch else "ARM (no architecture attributes)"]
        if self.cpu_name and self.cpu_name.startswith("cortex"):
            parts.append(f"({self.cpu_name})")
        return " ".join(parts)


def is_elf(path: Path) -> bool:
    """Whether `path` is a regular file starting with the ELF magic (cheap: reads 4 bytes)."""
    try:
        with path.open("rb") as stream:
            return stream.read(4) == ELF_MAGIC
    except OSError:
        return False


def read_elf_facts(path: Path) -> ElfFacts:
    """The facts of the ELF at `path`; FirmwareError if it is unreadable or not an ELF."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with path.open("rb") as stream:
            if stream.read(4) != ELF_MAGIC:
                raise FirmwareError(
                    f"{path} is not an ELF file",
                    hint="a firmware image's entrypoint must be the firmware ELF",
                )
            stream.seek(0)
            elf = ELFFile(stream)
            machine = str(elf["e_machine"])
            arch, profile, cpu_name = _arm_attributes(elf) if machine == "EM_ARM" else (None,) * 3
            return ElfFacts(
                path=str(path),
                elf_class=int(elf.elfclass),
                machine=machine,
                arch=arch,
                profile=profile,
                cpu_name=cpu_name,
                entry=int(elf["e_entry"]),
            )
    except FirmwareError:
        raise
    except (OSError, ELFError) as error:
        raise FirmwareError(f"cannot read firmware {path}: {error}") from error


def check_fits(facts: ElfFacts, core_cpu: str | None) -> None:
    """Raise FirmwareError unless the firmware runs on a core of type `core_cpu` (`cortex-m4`)."""
    if not facts.is_firmware:
        raise FirmwareError(
            f"{facts.path} is {facts.describe()}, not microcontroller firmware",
            hint="build it for a Cortex-M or Cortex-R core, e.g. arm-none-eabi-gcc -mcpu=cortex-m4",
        )
    if core_cpu is None:
        return
    runs = CORE_RUNS.get(core_cpu)
    if runs is None:
        raise FirmwareError(f"unknown core type {core_cpu!r}")
    if facts.arch not in runs:
        raise FirmwareError(
            f"{facts.path} is built for {facts.describe()}, but the core is a {core_cpu},"
            f" which runs {', '.join(sorted(runs))}",
            hint="rebuild the firmware for this core or request a core of the right type",
        )


def _arm_attributes(elf: object) -> tuple[str | None, str | None, str | None]:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import ARMAttributesSection

    assert isinstance(elf, ELFFile)
    section = elf.get_section_by_name(".ARM.attributes")
    if not isinstance(section, ARMAttributesSection):
        return None, None, None
    raw_arch: int | None = None
    profile: str | None = None
    cpu_name: str | None = None
    for subsection in section.iter_subsections():
        for subsubsection in subsection.iter_subsubsections():
            for attribute in subsubsection.iter_attributes():
                if attribute.tag == "TAG_CPU_ARCH":
                    raw_arch = int(attribute.value)
                elif attribute.tag == "TAG_CPU_ARCH_PROFILE":
                    profile = _PROFILES.get(int(attribute.value))
                elif attribute.tag == "TAG_CPU_NAME":
                    cpu_name = str(attribute.value).lower() or None
    return _arch_name(raw_arch, profile), profile, cpu_name


def _arch_name(raw_arch: int | None, profile: str | None) -> str | None:
    if raw_arch is None:
        return None
    name = _CPU_ARCH.get(raw_arch, f"unknown({raw_arch})")
    if name == "v7" and profile:
        return f"v7-{profile}"
    return name
