"""Waiting with a time limit: the condition is checked until it holds or the time is up."""

from __future__ import annotations

import time

from smarter_common.deadline import Deadline, wait_until


def test_a_condition_that_holds_at_once_does_not_wait() -> None:
    started = time.monotonic()

    assert wait_until(lambda: True, timeout=5.0, interval=1.0)
    assert time.monotonic() - started < 0.5


def test_a_condition_that_never_holds_ends_at_the_timeout_not_an_interval_later() -> None:
    checks: list[float] = []
    started = time.monotonic()

    def never() -> bool:
        checks.append(time.monotonic())
        return False

    assert not wait_until(never, 0.3, interval=10.0)

    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 2.0
    assert checks[-1] - started >= 0.3  # checked once more when the time was up


def test_a_condition_that_comes_true_is_seen() -> None:
    ready_at = time.monotonic() + 0.2

    assert wait_until(lambda: time.monotonic() >= ready_at, timeout=10.0, interval=0.01)


def test_a_deadline_counts_down_and_never_below_zero() -> None:
    deadline = Deadline(0.1)

    assert not deadline.expired()
    assert 0.0 < deadline.remaining() <= 0.1
    deadline.sleep(5.0)
    assert deadline.expired()
    assert deadline.remaining() == 0.0
