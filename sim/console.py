"""The pty behind a `dev/ttyRPMSG<k>`: a core's console, from `up` to `down` across core restarts,
or a data channel (sim.channels), while its firmware run has it announced.

The simulator holds both ends. `dev/ttyRPMSG<k>` is a symlink to the slave, which readers open
like a real RPMsg tty; the simulator writes the firmware's UART output into the master (and
reads a data channel's input from it). Holding the slave open keeps the pty alive (no hang-up)
when readers come and go; closing it hangs up whoever still has the slave open.
"""

from __future__ import annotations

import os
import termios
import tty
from pathlib import Path


class Console:
    """The pty behind one `dev/ttyRPMSG<k>`."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self._master, self._slave = os.openpty()
        # Raw: the firmware's bytes arrive unchanged (no echo, no CR/LF translation).
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.slave_path = Path(os.ttyname(self._slave))
        self.dropped = 0
        link.symlink_to(self.slave_path)

    @property
    def master(self) -> int:
        """The simulator's end (non-blocking): what readers of the tty wrote comes out here."""
        return self._master

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
