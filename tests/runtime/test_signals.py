"""`kill`'s signal argument read as runc 1.1.5 reads it, and each signal's effect on a core."""

from __future__ import annotations

import pytest

from runtime_handler import signals
from runtime_handler.errors import RuntimeCallError


@pytest.mark.parametrize(
    ("text", "number"),
    [("9", 9), ("+9", 9), ("KILL", 9), ("sigkill", 9), ("winch", 28), ("PWR", 30), ("", 15),
     ("0", 0), ("64", 64), ("99", 99), ("-9", -9)],
)  # fmt: skip
def test_numbers_and_names_with_or_without_sig_are_read_as_runc_reads_them(
    text: str, number: int
) -> None:
    assert signals.parse(text) == number


@pytest.mark.parametrize("text", ["FOO", "SIGFOO", "IOT", "CLD", "POLL", "RTMIN", "1.5", " 9"])
def test_names_runc_does_not_know_are_refused_in_its_words(text: str) -> None:
    with pytest.raises(RuntimeCallError) as raised:
        signals.parse(text)
    assert str(raised.value) == f'unknown signal "{text}"'


@pytest.mark.parametrize("number", [99, 65, -9])
def test_a_number_the_kernel_refuses_is_refused_as_runc_reports_kills_einval(number: int) -> None:
    with pytest.raises(RuntimeCallError) as raised:
        signals.effect(number)
    assert str(raised.value) == "unable to signal init: invalid argument"


@pytest.mark.parametrize("name", ["SIGCHLD", "SIGURG", "SIGWINCH", "SIGCONT"])
def test_signals_a_process_ignores_leave_the_core_running(name: str) -> None:
    assert signals.effect(signals.NUMBERS[name]) == signals.NO_EFFECT


@pytest.mark.parametrize(
    "name", ["SIGTERM", "SIGKILL", "SIGHUP", "SIGINT", "SIGQUIT", "SIGSEGV", "SIGUSR1", "SIGPWR"]
)
def test_signals_that_end_a_process_stop_the_core(name: str) -> None:
    assert signals.effect(signals.NUMBERS[name]) == signals.STOPS_CORE


def test_real_time_signals_end_a_process_so_they_stop_the_core() -> None:
    assert {signals.effect(number) for number in range(32, 65)} == {signals.STOPS_CORE}


@pytest.mark.parametrize("name", ["SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU"])
def test_stop_signals_are_refused_because_a_core_cannot_pause(name: str) -> None:
    with pytest.raises(RuntimeCallError) as raised:
        signals.effect(signals.NUMBERS[name])
    assert str(raised.value).startswith(
        f"{name} would pause the container, and a remote core cannot be paused"
    )
