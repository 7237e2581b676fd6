"""Build the SDK's example firmware (`sim/firmware/`) for a core with Debian's arm-none-eabi-gcc.

`-mcpu=<cpu> -mthumb` makes the compiler record the architecture in `.ARM.attributes`, which is
what the simulator and the hybrid runtime check. Builds are cached by a hash of the sources and
the arguments, so tests can ask for the same firmware many times cheaply.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sim.boards import core_type
from smarter_common.errors import ConfigError, SmarterError

SDK_DIR = Path(__file__).parent / "firmware"
KINDS = ("hello", "crash", "lockup", "hang", "echo", "sensor")
# `hang` is `crash` with a fault handler that loops silently, as many vendor startup files'.
_SOURCE_OF = {"hang": "crash"}
# The kinds that talk on the data channel (UART1) too.
_CHANNEL_KINDS = frozenset({"echo", "sensor"})
# The kinds whose name carries `crash_after`, the only ones it changes.
_CRASHING_KINDS = frozenset({"crash", "lockup", "hang"})
_DEFINES_OF = {"hang": ("-DSIM_SILENT_FAULTS",)}
GCC = "arm-none-eabi-gcc"
_COMMON_SOURCES = ("startup.c", "console.c")


@dataclass(frozen=True)
class _Machine:
    uart0_base: int
    uart1_base: int
    sysclk_hz: int


# UART0 and UART1 of each QEMU machine: CMSDK APB UARTs at 0x40004000 and 0x40005000 on the
# MPS2 images; on AN505 they sit in the expansion area at 0x40200000 and 0x40201000, whose
# secure aliases (0x5...) are what a core that boots secure (as QEMU starts it) uses.
_MACHINES = {
    "mps2-an385": _Machine(0x40004000, 0x40005000, 25_000_000),
    "mps2-an386": _Machine(0x40004000, 0x40005000, 25_000_000),
    "mps2-an500": _Machine(0x40004000, 0x40005000, 25_000_000),
    "mps2-an505": _Machine(0x50200000, 0x50201000, 20_000_000),
}


class FirmwareBuildError(SmarterError):
    """The example firmware could not be built."""


def build_firmware(kind: str, cpu: str, out_dir: Path, *, crash_after: int = 3) -> Path:
    """Build the `kind` firmware (one of KINDS) for `cpu` into `out_dir`.

    Returns the ELF's path. `crash_after` is how many lines the faulting kinds print first.
    """
    if kind not in KINDS:
        raise ConfigError(f"no example firmware {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    if crash_after < 0:
        raise ConfigError(f"crash_after must be 0 or more, not {crash_after}")
    machine_name = core_type(cpu).machine
    machine = _MACHINES[machine_name]
    gcc = shutil.which(GCC)
    if gcc is None:
        raise FirmwareBuildError(
            f"{GCC} is not installed",
            hint="install gcc-arm-none-eabi and libnewlib-arm-none-eabi with scripts/setup.sh",
        )
    main_source = f"{_SOURCE_OF.get(kind, kind)}.c"
    channel = ("channel.c",) if kind in _CHANNEL_KINDS else ()
    sources = [SDK_DIR / "src" / name for name in (*_COMMON_SOURCES, *channel, main_source)]
    script = SDK_DIR / "link" / f"{machine_name}.ld"
    arguments = [
        f"-mcpu={cpu}",
        "-mthumb",
        "-Os",
        "-g",
        "-std=c11",
        "-ffreestanding",
        "-nostdlib",
        "-Wall",
        "-Wextra",
        "-Werror",
        f'-DCPU_NAME="{cpu}"',
        f"-DUART0_BASE={machine.uart0_base:#x}u",
        f"-DUART1_BASE={machine.uart1_base:#x}u",
        f"-DSYSCLK_HZ={machine.sysclk_hz}u",
        f"-DCRASH_AFTER={crash_after}",
        *_DEFINES_OF.get(kind, ()),
        f"-I{SDK_DIR / 'src'}",
        f"-L{SDK_DIR / 'link'}",
        f"-T{script}",
    ]
    digest = _digest(gcc, arguments, [*sources, SDK_DIR / "src" / "sim.h", *_scripts()])
    suffix = f"-{crash_after}" if kind in _CRASHING_KINDS else ""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{kind}{suffix}-{cpu}-{digest[:12]}.elf"
    if target.is_file():
        return target
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    command = [gcc, *arguments, *map(str, sources), "-lgcc", "-o", str(partial)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise FirmwareBuildError(
            f"building {kind} for {cpu} failed: {result.stderr.strip()}",
            hint=" ".join(command),
        )
    partial.rename(target)
    return target


def _scripts() -> list[Path]:
    return sorted((SDK_DIR / "link").glob("*.ld"))


def _digest(gcc: str, arguments: list[str], files: list[Path]) -> str:
    hasher = hashlib.sha256()
    hasher.update(gcc.encode())
    for argument in arguments:
        hasher.update(argument.encode() + b"\0")
    for path in files:
        hasher.update(path.name.encode() + b"\0" + path.read_bytes())
    return hasher.hexdigest()
