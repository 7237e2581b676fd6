"""One run of a firmware on a QEMU Cortex-M machine, its UART relayed to the core's console.

QEMU runs with no display, no default devices, no network and no human monitor; its first
serial port (UART0) is stdio, its second (UART1) the run's data channel (sim.channels). The
relay reads UART0's output, hands it to the console and watches for the SDK's fault marker.
A fault handler that loops without saying anything (as many vendor startup files' do) is
caught from the CPU itself: a watcher asks QEMU, over a private QMP socket, which exception
the core is in, and two samples in a row in a fault handler end the run as a fault. QEMU
exiting for any reason (killed, or aborting on a CPU lockup, which QEMU treats as fatal) ends
the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim.boards import CoreType
from sim.channels import DataChannel
from sim.console import Console
from smarter_common.deadline import Deadline
from smarter_common.errors import SmarterError
from smarter_common.logs import get_logger

QEMU = "qemu-system-arm"
INSTALL_HINT = "install the Debian packages with scripts/setup.sh (qemu-system-arm, fuse3)"
# Printed by the SDK's fault handler (sim/firmware/src/sim.h, SIM_FAULT_MARKER).
FAULT_MARKER = b"*** HardFault ***"
# M-profile exception numbers (IPSR) of the fault handlers: HardFault, MemManage, BusFault,
# UsageFault, SecureFault (v8-M).
FAULT_EXCEPTIONS = {
    3: "HardFault",
    4: "MemManage",
    5: "BusFault",
    6: "UsageFault",
    7: "SecureFault",
}
FAULT_POLL_S = 0.5
FAULT_SAMPLES = 2
_XPSR = re.compile(r"\bXPSR=([0-9a-fA-F]{8})\b")


class QemuMissingError(SmarterError):
    """qemu-system-arm is not installed."""


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise QemuMissingError(f"{QEMU} is not installed", hint=INSTALL_HINT)
    return path


def exception_number(registers: str) -> int | None:
    """The exception the core is handling (IPSR, 0 in thread mode), from `info registers`."""
    found = _XPSR.search(registers)
    return int(found.group(1), 16) & 0x1FF if found else None


def command(
    core: CoreType,
    firmware: Path,
    qmp_socket: Path | None = None,
    uart1: list[str] | None = None,
) -> list[str]:
    """The QEMU command line that runs `firmware` on the machine for `core`.

    `uart1` is the chardev and serial arguments of the second serial port, if any.
    """
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
        *(uart1 or []),
        *(["-qmp", f"unix:{qmp_socket},server=on,wait=off"] if qmp_socket else []),
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
        channel: DataChannel | None = None,
    ) -> None:
        self._console = console
        self.channel = channel
        self._on_end = on_end
        self._stopping = False
        # Set by stop(): the fault watcher's wait between samples ends at once, so a stop does
        # not wait out FAULT_POLL_S (it made every `stop` write take up to half a second).
        self._stop_requested = threading.Event()
        self._stuck_in: str | None = None
        self._log = get_logger("smarter-sim", core=core_id)
        self._qmp_dir = Path(tempfile.mkdtemp(prefix="smarter-sim-qmp-"))
        self._qmp_socket = self._qmp_dir / "qmp.sock"
        # A new session: a Ctrl-C meant for the simulator does not reach QEMU first; the
        # simulator stops its cores itself.
        self.process = subprocess.Popen(
            command(
                core, firmware, self._qmp_socket, channel.qemu_arguments() if channel else None
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.pid = self.process.pid
        self._log.info("qemu_started", pid=self.pid, machine=core.machine, firmware=str(firmware))
        self._relay = threading.Thread(target=self._relay_output, name=f"uart-{core_id}")
        self._errors = threading.Thread(target=self._log_errors, name=f"qemu-err-{core_id}")
        self._watcher = threading.Thread(target=self._watch_faults, name=f"qmp-{core_id}")
        if channel is not None:
            channel.start()
        self._relay.start()
        self._errors.start()
        self._watcher.start()

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
            self._log.warning("firmware_fault", pid=self.pid)
            self.process.kill()
        code = self.process.wait()
        self.process.stdout.close()
        if self.channel is not None:
            # The firmware is gone, and with it its endpoints: the channel goes before the
            # core's state changes, as the kernel removes rpmsg devices when it stops a core.
            self.channel.close()
        if self._stuck_in is not None:
            reason = "fault"
        if reason == "exited" and not self._stopping:
            self._log.warning("qemu_exited", pid=self.pid, code=code)
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
                self._log.warning("qemu_says", pid=self.pid, line=line)
            else:
                self._log.debug("qemu_says", pid=self.pid, line=line)
        self.process.stderr.close()

    def _watch_faults(self) -> None:
        """Sample the core's exception over QMP until QEMU ends; kill QEMU on a fault loop."""
        try:
            with self._qmp() as (reader, writer):
                in_fault = 0
                while self.process.poll() is None and not self._stopping:
                    registers = _qmp_call(
                        reader, writer, "human-monitor-command", {"command-line": "info registers"}
                    )
                    fault = FAULT_EXCEPTIONS.get(exception_number(str(registers)) or 0)
                    in_fault = in_fault + 1 if fault else 0
                    if fault and in_fault >= FAULT_SAMPLES:
                        self._stuck_in = fault
                        self._log.warning(
                            "firmware_stuck_in_fault_handler", pid=self.pid, fault=fault
                        )
                        self.process.kill()
                        return
                    self._stop_requested.wait(FAULT_POLL_S)
        except (OSError, ValueError, KeyError):
            pass  # QEMU gone (or never up): the relay reports how the run ended
        finally:
            shutil.rmtree(self._qmp_dir, ignore_errors=True)

    def _qmp(self) -> _QmpConnection:
        deadline = Deadline(5.0)
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self._qmp_socket))
                return _QmpConnection(sock)
            except OSError:
                sock.close()
                if self.process.poll() is not None or deadline.expired():
                    raise
                deadline.sleep(0.05)

    def stop(self) -> None:
        """End QEMU and wait until the relay has seen it go (on_end has run by then).

        Not to be called from `on_end`, nor while holding a lock that `on_end` takes.
        """
        self._stopping = True
        self._stop_requested.set()
        # Popen.kill does nothing once the process has been reaped, so a recycled PID is safe.
        self.process.kill()
        self._relay.join()
        self._errors.join()
        self._watcher.join()


class _QmpConnection:
    """A QMP session on a connected socket: greeting read, capabilities negotiated."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = sock.makefile("rb")
        self._writer = sock.makefile("wb")

    def __enter__(self) -> tuple[Any, Any]:
        self._sock.settimeout(5.0)
        json.loads(self._reader.readline())  # the greeting
        _qmp_call(self._reader, self._writer, "qmp_capabilities", None)
        return self._reader, self._writer

    def __exit__(self, *exc: object) -> None:
        for stream in (self._reader, self._writer):
            stream.close()
        self._sock.close()


def _qmp_call(reader: Any, writer: Any, name: str, arguments: dict[str, str] | None) -> object:
    """Execute one QMP command; its `return` value (events in between are skipped)."""
    message: dict[str, object] = {"execute": name}
    if arguments:
        message["arguments"] = arguments
    writer.write(json.dumps(message).encode() + b"\n")
    writer.flush()
    while True:
        line = reader.readline()
        if not line:
            raise OSError("QMP closed")
        reply = json.loads(line)
        if "return" in reply:
            return reply["return"]
        if "error" in reply:
            raise ValueError(str(reply["error"]))
