"""Reading which exception a simulated core is in from QEMU's `info registers`."""

from __future__ import annotations

from sim.qemu import FAULT_EXCEPTIONS, exception_number

# As QEMU 7.2 prints a Cortex-M4 spinning in its HardFault handler.
IN_HARDFAULT = """CPU#0
R00=00000000 R01=0000018b R02=00000000 R03=00000064
R12=00000000 R13=203fffd0 R14=fffffff9 R15=00000042
XPSR=41000003 -Z-- T handler
FPSCR: 00000000
"""


def test_the_exception_is_the_low_bits_of_xpsr() -> None:
    assert exception_number(IN_HARDFAULT) == 3
    assert FAULT_EXCEPTIONS[3] == "HardFault"


def test_thread_mode_is_exception_zero_and_not_a_fault() -> None:
    thread = IN_HARDFAULT.replace("41000003 -Z-- T handler", "61000000 -ZC- T priv-thread")
    assert exception_number(thread) == 0
    assert 0 not in FAULT_EXCEPTIONS
    # SysTick (15) and other interrupts are not faults either.
    assert exception_number(thread.replace("61000000", "6100000f")) not in FAULT_EXCEPTIONS


def test_output_without_xpsr_says_nothing() -> None:
    assert exception_number("CPU#0\nR00=00000000\n") is None
