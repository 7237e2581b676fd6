"""One simulated remote core: the state machine behind its sysfs files, with the kernel's errnos.

The kernel's side of the contract in smarter_common.remoteproc (names, states, commands) and
smarter_common.remoteproc_control (each refusal's errno), so that the runtime reads here exactly
what it reads on a board.

Mirrors drivers/remoteproc/remoteproc_sysfs.c: `firmware` can change only while the core is
offline (EBUSY otherwise); `start` on a running core is EBUSY, a missing firmware file ENOENT, a
file that is not an ELF this core can run EINVAL; `stop` is EINVAL unless the core is running
(so also on a crashed core: `state_store` and `rproc_shutdown` accept only running/attached).
A crashed core leaves that state through recovery (`recovery`: `enabled`, the kernel's default,
restarts the same firmware by itself at once; `disabled` leaves it crashed; writing `recover`
restarts it once), after which `stop` works.
Departures: `start` on a crashed core fails with EBUSY (the kernel returns success and does
nothing, which leaves a caller waiting for `running` and unbalances the core's power count); a
recovery that finds no firmware file leaves the core offline (the kernel also leaves it
offline, but still powered, so a later `start` would be ignored).
"""

from __future__ import annotations

import errno
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from sim.boards import CoreType
from sim.channels import CONSOLE_ADDRESS, DataChannel, RpmsgDevice
from sim.console import Console
from sim.qemu import QemuRun
from smarter_common.errors import SmarterError
from smarter_common.firmware_elf import FirmwareError, check_fits, read_elf_facts
from smarter_common.logs import get_logger
from smarter_common.remoteproc import (
    COMMAND_START,
    COMMAND_STOP,
    RECOVERY_DISABLED,
    RECOVERY_ENABLED,
    RECOVERY_RECOVER,
    STATE_CRASHED,
    STATE_OFFLINE,
    STATE_RUNNING,
)
from smarter_common.remoteproc_control import (
    FIRMWARE_EMPTY,
    FIRMWARE_WHILE_RUNNING,
    RECOVERY_REJECTED,
    START_NO_FILE,
    START_WHILE_BUSY,
    STATE_REJECTED,
    Refusal,
)


class SysfsWriteError(OSError):
    """A sysfs write the kernel would refuse, carrying the errno the writer sees."""

    def __init__(self, refusal: Refusal, why: str) -> None:
        super().__init__(refusal.errno, why)


class QemuStartError(OSError):
    """QEMU would not start: the writer of `start` sees EIO, as for a core that fails to boot."""

    def __init__(self, why: str) -> None:
        super().__init__(errno.EIO, why)


# A runner starts QEMU on a thread whose signal mask is the simulator's normal one; see
# sim.server (FUSE request threads block every signal, and children would inherit that).
Runner = Callable[[Callable[[], QemuRun]], QemuRun]
# Makes the data channel of one firmware run of the core with the given index.
ChannelMaker = Callable[[int], DataChannel]


class SimCore:
    """`remoteprocN`: its type, firmware name, state and (while running) its QEMU."""

    def __init__(
        self,
        index: int,
        core_type: CoreType,
        console: Console,
        work_dir: Path,
        firmware_dirs: Callable[[], list[Path]],
        runner: Runner,
        channels: ChannelMaker | None = None,
    ) -> None:
        self.index = index
        self.core_type = core_type
        self.console = console
        self._work_dir = work_dir
        self._firmware_dirs = firmware_dirs
        self._runner = runner
        self._channels = channels
        # The data channel of the latest run: shown in sysfs until it is withdrawn, which
        # happens after the run is no longer the core's (stop clears that first).
        self._channel: DataChannel | None = None
        self._lock = threading.Lock()
        self._state = STATE_OFFLINE
        self._firmware = f"rproc-{self.device_id}-fw"
        self._run: QemuRun | None = None
        self._recovery_enabled = True
        self._log = get_logger("smarter-sim", core=self.device_id)

    @property
    def device_id(self) -> str:
        return f"remoteproc{self.index}"

    @property
    def state(self) -> str:
        return self._state

    @property
    def firmware(self) -> str:
        return self._firmware

    @property
    def recovery(self) -> str:
        return RECOVERY_ENABLED if self._recovery_enabled else RECOVERY_DISABLED

    def rpmsg_devices(self) -> list[RpmsgDevice]:
        """The core's rpmsg tty channels now: its console, and its data channel once announced."""
        devices = [RpmsgDevice(self.index, CONSOLE_ADDRESS)]
        channel = self._channel
        if channel is not None and channel.announced:
            devices.append(channel.device)
        return devices

    @property
    def qemu_pid(self) -> int | None:
        run = self._run
        return run.pid if run is not None else None

    def set_firmware(self, value: str) -> None:
        name = value.split("\n", 1)[0]
        with self._lock:
            if self._state != STATE_OFFLINE:
                raise SysfsWriteError(FIRMWARE_WHILE_RUNNING, "can't change firmware while running")
            if not name:
                raise SysfsWriteError(FIRMWARE_EMPTY, "empty firmware name")
            self._firmware = name
        self._log.info("firmware_set", firmware=name)

    def write_state(self, value: str) -> None:
        command = value[:-1] if value.endswith("\n") else value
        if command == COMMAND_START:
            self.start()
        elif command == COMMAND_STOP:
            self.stop()
        else:
            raise SysfsWriteError(STATE_REJECTED, f"unrecognised option {command!r}")

    def write_recovery(self, value: str) -> None:
        command = value[:-1] if value.endswith("\n") else value
        if command == RECOVERY_ENABLED:
            self._recovery_enabled = True
            self.recover()
        elif command == RECOVERY_DISABLED:
            self._recovery_enabled = False
        elif command == RECOVERY_RECOVER:
            self.recover()
        else:
            raise SysfsWriteError(RECOVERY_REJECTED, f"unrecognised option {command!r}")
        self._log.info("recovery_set", recovery=command)

    def recover(self) -> None:
        """What `rproc_trigger_recovery` does: a crashed core boots its firmware again."""
        with self._lock:
            if self._state != STATE_CRASHED:
                return
            self._state = STATE_OFFLINE
            try:
                self._boot()
            except (SysfsWriteError, QemuStartError) as error:
                # The kernel writes no errno back for a failed recovery; the core stays offline.
                self._log.warning("recovery_failed", error=str(error))
                return
        self._log.info("core_recovered", firmware=self._firmware)

    def start(self) -> None:
        with self._lock:
            if self._state != STATE_OFFLINE:
                raise SysfsWriteError(START_WHILE_BUSY, f"core is {self._state}")
            self._boot()
        self._log.info("core_started", firmware=self._firmware, qemu_pid=self.qemu_pid)

    def _boot(self) -> None:
        """Load the firmware named in `firmware` and run it (the caller holds the lock)."""
        source = self._find_firmware(self._firmware)
        try:
            check_fits(read_elf_facts(source), self.core_type.cpu)
        except FirmwareError as error:
            self._log.warning("firmware_refused", firmware=str(source), error=str(error))
            raise SysfsWriteError(STATE_REJECTED, str(error)) from error
        # The kernel loads the image into the core's memory at start; a private copy keeps
        # later changes to the file from reaching the running core.
        self._work_dir.mkdir(parents=True, exist_ok=True)
        image = self._work_dir / "firmware.elf"
        shutil.copyfile(source, image)
        self.console.discard_unread()
        try:
            self._run = self._runner(lambda: self._spawn(image))
        except (OSError, SmarterError) as error:
            self._log.error("qemu_start_failed", error=str(error))
            raise QemuStartError(f"cannot start QEMU: {error}") from error
        self._state = STATE_RUNNING

    def _spawn(self, image: Path) -> QemuRun:
        channel = self._channels(self.index) if self._channels is not None else None
        self._channel = channel
        try:
            return QemuRun(
                self.core_type,
                image,
                self.console,
                self._ended,
                core_id=self.device_id,
                channel=channel,
            )
        except BaseException:
            if channel is not None:
                channel.close()
            raise

    def _ended(self, run: QemuRun, reason: str) -> None:
        # start() holds the lock until self._run is set, so a QEMU that dies at once is seen.
        with self._lock:
            if run is not self._run:
                return
            self._run = None
            if self._state == STATE_RUNNING:
                self._state = STATE_CRASHED
            recover = self._recovery_enabled and self._state == STATE_CRASHED
        self._log.warning("core_crashed", reason=reason)
        if recover:
            # The kernel recovers from a work queue, not from the code that noticed the crash.
            threading.Thread(target=self.recover, name="recovery", daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            if self._state != STATE_RUNNING:
                raise SysfsWriteError(STATE_REJECTED, f"core is {self._state}")
            run, self._run = self._run, None
            self._state = STATE_OFFLINE
        if run is not None:
            run.stop()
        self._log.info("core_stopped")

    def shutdown(self) -> None:
        """Stop the core whatever its state (the simulator is going away)."""
        with self._lock:
            run, self._run = self._run, None
            self._state = STATE_OFFLINE
        if run is not None:
            run.stop()

    def _find_firmware(self, name: str) -> Path:
        if name.startswith("/") or ".." in Path(name).parts:
            raise SysfsWriteError(START_NO_FILE, f"firmware name {name!r} is not a relative path")
        for directory in self._firmware_dirs():
            candidate = directory / name
            if candidate.is_file():
                return candidate
        raise SysfsWriteError(START_NO_FILE, f"firmware {name!r} not found")
