"""The supervisor's last copy of a stopped core's console: everything through, without waiting.

A real pseudo-terminal stands for the core's console tty: what is written to its master is what
the core printed, and the copy reads the tty as the supervisor reads a board's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime_handler import supervisor


@pytest.fixture
def console() -> Iterator[tuple[int, Path]]:
    """The core's end of the console, and the console's tty path."""
    core_end, tty_end = os.openpty()
    try:
        yield core_end, Path(os.ttyname(tty_end))
    finally:
        # The copy's blocked read ends (EIO) once the core's end is gone.
        os.close(core_end)
        os.close(tty_end)


@pytest.fixture
def stdout() -> Iterator[tuple[int, int]]:
    """The container's stdout: a pipe, (read end, write end)."""
    reader, writer = os.pipe()
    os.set_blocking(reader, False)
    try:
        yield reader, writer
    finally:
        os.close(reader)
        os.close(writer)


@pytest.fixture
def copies() -> Iterator[list[supervisor._ConsoleCopy]]:
    made: list[supervisor._ConsoleCopy] = []
    try:
        yield made
    finally:
        for copy in made:
            if copy._fd is not None:
                os.close(copy._fd)


def _copy(path: Path, out_fd: int, made: list[supervisor._ConsoleCopy]) -> supervisor._ConsoleCopy:
    copy = supervisor._ConsoleCopy(path, out_fd=out_fd)
    made.append(copy)
    copy.open()
    copy.start()
    return copy


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return b"".join(chunks)
        chunks.append(chunk)


def test_drain_right_after_the_core_printed_does_not_wait_out_a_long_quiet_period(
    console: tuple[int, Path],
    stdout: tuple[int, int],
    copies: list[supervisor._ConsoleCopy],
) -> None:
    core_end, path = console
    reader, writer = stdout
    copy = _copy(path, writer, copies)
    os.write(core_end, b"hello from the core\r\n")
    seen = b""
    deadline = time.monotonic() + 10
    while b"hello" not in seen:
        assert time.monotonic() < deadline, "the copy never gave the core's line"
        time.sleep(0.001)
        seen += _read_all(reader)
    started = time.monotonic()
    copy.drain()
    # Nothing is left to copy: the drain costs its short quiet period (20 ms), not the 200 ms
    # that a kill right after the firmware printed used to wait.
    assert time.monotonic() - started < 0.1


def test_drain_copies_every_line_the_console_still_holds(
    console: tuple[int, Path],
    stdout: tuple[int, int],
    copies: list[supervisor._ConsoleCopy],
) -> None:
    core_end, path = console
    reader, writer = stdout
    copy = _copy(path, writer, copies)
    lines = b"".join(b"line %d\r\n" % number for number in range(200))
    os.write(core_end, lines)
    copy.drain()
    assert _read_all(reader) == lines.replace(b"\r\n", b"\n")
