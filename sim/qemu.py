"""One run of a firmware on a QEMU Cortex-M machine, its UART relayed to the core's console.

QEMU runs with no display, no default devices, no network and no monitor; its only serial port
(UART0) is stdio. The relay reads that output, hands it to the console and watches for the
SDK's fault marker. QEMU exiting for any reason (killed, or aborting on a CPU lockup, which
QEMU treats as fatal) ends the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from sim.boards import CoreType
from sim.console import Console
from smarter_common.errors import SmarterError
from smarter_common.logs import get_logger

QEMU = "qemu-system-arm"
INSTALL_HINT = "install the Debian packages with scripts/setup.sh (qemu-system-arm, fuse3)"
# Printed by the SDK's fault handler (sim/firmware/src/sim.h, SIM_FAULT_MARKER).
FAULT_MARKER = b"*** HardFault ***"


class QemuMissingError(SmarterError):
    """qemu-system-arm is not installed."""


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise QemuMissingError(f"{QEMU} is not installed", hint=INSTALL_HINT)
    return path


def command(core: CoreType, firmware: Path) -> list[str]:
    """The QEMU command line that runs `firmware` on the machine for `core`."""
    # If the simulator itself is killed outright, the kernel kills its QEMUs too.
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--pdeathsig", "KILL"] if setpriv else []
    return [
        *prefix,
        qemu_binary(),
        "-machine", core.machine,
        "-nographic",
        "-nodefaults",
        "-monitor", "none",
        "-nic", "none",
        "-chardev", "stdio,id=uart0,signal=off",
        "-serial", "chardev:uart0",
        "-kernel", str(firmware),
    ]  # fmt: skip


class QemuRun:
    """QEMU running one firmware. `on_end(run, reason)` is called once, from a relay thread."""

    def __init__(
        self,
        core: CoreType,
        firmware: Path,
        console: Console,
        on_end: Callable[[QemuRun, str], None],
        *,
        core_id: str,
    ) -> None:
        self._console = console
        self._on_end = on_end
        self._stopping = False
        self._log = get_logger("smarter-sim", core=core_id)
        # A new session: a Ctrl-C meant for the simulator does not reach QEMU first; the
        # simulator stops its cores itself.
        self.process = subprocess.Popen(
            command(core, firmware),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.pid = self.process.pid
        self._log.info("qemu started", pid=self.pid, machine=core.machine, firmware=str(firmware))
        self._relay = threading.Thread(target=self._relay_output, name=f"uart-{core_id}")
        self._errors = threading.Thread(target=self._log_errors, name=f"qemu-err-{core_id}")
        self._relay.start()
        self._errors.start()

    def _relay_output(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        tail = b""
        reason = "exited"
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            self._console.write(chunk)
            if FAULT_MARKER in tail + chunk:
                reason = "fault"
                break
            tail = (tail + chunk)[-len(FAULT_MARKER) :]
        if reason == "fault":
            self._log.warning("firmware fault", pid=self.pid)
            self.process.kill()
        code = self.process.wait()
        self.process.stdout.close()
        if reason == "exited" and not self._stopping:
            self._log.warning("qemu exited", pid=self.pid, code=code)
        self._on_end(self, "stopped" if self._stopping else reason)

    def _log_errors(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            if not line or "has no peer" in line:
                continue
            # QEMU's own messages start with its name; what follows a fatal one is a register
            # dump, worth keeping only when debugging.
            if line.startswith("qemu"):
                self._log.warning("qemu says", pid=self.pid, line=line)
            else:
                self._log.debug("qemu says", pid=self.pid, line=line)
        self.process.stderr.close()

    def stop(self) -> None:
        """End QEMU and wait until the relay has seen it go (on_end has run by then).

        Not to be called from `on_end`, nor while holding a lock that `on_end` takes.
        """
        self._stopping = True
        # Popen.kill does nothing once the process has been reaped, so a recycled PID is safe.
        self.process.kill()
        self._relay.join()
        self._errors.join()
