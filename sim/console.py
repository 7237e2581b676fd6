"""A core's console device: a pty pair that lives from `up` to `down`, across core restarts.

The simulator holds both ends. `dev/ttyRPMSG<N>` is a symlink to the slave, which readers open
like a real RPMsg tty; the simulator writes the firmware's UART output into the master. Holding
the slave open keeps the pty alive (no hang-up) when readers come and go.
"""

from __future__ import annotations

import os
import termios
import tty
from pathlib import Path


class Console:
    """The pty behind one core's `dev/ttyRPMSG<N>`."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self._master, self._slave = os.openpty()
        # Raw: the firmware's bytes arrive unchanged (no echo, no CR/LF translation).
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.slave_path = Path(os.ttyname(self._slave))
        self.dropped = 0
        link.symlink_to(self.slave_path)

    def write(self, data: bytes) -> None:
        """Pass UART output to readers; when nobody reads and the tty buffer is full, drop it."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                self.dropped += len(view)
                return
            view = view[written:]

    def discard_unread(self) -> None:
        """Forget output nobody read yet, so a newly started firmware's console starts clean."""
        termios.tcflush(self._slave, termios.TCIFLUSH)
        try:
            while os.read(self._master, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.link.unlink(missing_ok=True)
        os.close(self._master)
        os.close(self._slave)
