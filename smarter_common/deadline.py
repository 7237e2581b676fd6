"""Waiting with a time limit: a deadline on the monotonic clock, and polling a condition until
it holds or the deadline passes.

Every loop that only waits uses these, so that the clock (monotonic, never the wall clock), the
last check after the final sleep and the sleep that never overshoots the deadline are written
once. Standard library only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_INTERVAL = 0.05


class Deadline:
    """A moment `seconds` from now on the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(self._end - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return time.monotonic() >= self._end

    def sleep(self, interval: float) -> None:
        """Sleep `interval` seconds, or less if the deadline comes first."""
        time.sleep(min(interval, self.remaining()))


def wait_until(
    condition: Callable[[], bool], timeout: float, interval: float = DEFAULT_INTERVAL
) -> bool:
    """Check `condition` every `interval` seconds until it holds (True) or `timeout` seconds
    have passed (False); it is checked once more when the time is up, never after."""
    deadline = Deadline(timeout)
    while not condition():
        if deadline.expired():
            return False
        deadline.sleep(interval)
    return True
