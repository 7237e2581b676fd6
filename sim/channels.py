"""A core's RPMsg tty channels as a board's kernel publishes them; its data channel's relay.

On a board, firmware announces `rpmsg-tty` channels; the kernel makes an rpmsg device for each
(`virtio<V>.rpmsg-tty.<src>.<dst>` under the core's virtio device, linked from
`/sys/bus/rpmsg/devices`) and `rpmsg_tty` a `/dev/ttyRPMSG<k>` whose sysfs `device` is that rpmsg
device. The simulator's console is the first such channel of a core, there from `up` to `down`.
Its data channel is the QEMU machine's UART1, a new one for each firmware run: QEMU reads and
writes two FIFOs (`-chardev pipe`), and a relay thread passes the bytes to and from a pty once
the firmware has written the SDK's announce marker (sim/firmware/src/sim.h). Only then is the
channel published, `/dev` last; it is withdrawn, `/dev` first, when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from dataclasses import dataclass
from pathlib import Path

from sim.console import Console
from smarter_common.hostroot import HostRoot
from smarter_common.logs import get_logger

CHANNEL_NAME = "rpmsg-tty"
# SIM_CHANNEL_ANNOUNCE in sim/firmware/src/sim.h.
ANNOUNCE = b"\x1b[rpmsg-announce rpmsg-tty]\n"
# The first endpoint address both sides hand out (RPMSG_RESERVED_ADDRESSES): the console's; the
# data channel is the firmware's second endpoint.
CONSOLE_ADDRESS = 0x400
DATA_ADDRESS = 0x401
RPMSG_ATTRIBUTES = ("name", "src", "dst")
TTY_PREFIX = "ttyRPMSG"
_CHUNK = 4096


@dataclass(frozen=True)
class RpmsgDevice:
    """One rpmsg tty channel of core `core_index`: the device a board's kernel makes for it."""

    core_index: int
    address: int

    @property
    def name(self) -> str:
        # The kernel names a channel made from an announcement with the source address it had
        # then, RPMSG_ADDR_ANY, printed as -1.
        return f"{self.virtio}.{CHANNEL_NAME}.-1.{self.address}"

    @property
    def virtio(self) -> str:
        return f"virtio{self.core_index}"

    @property
    def parts(self) -> tuple[str, str, str]:
        """The device's path under `remoteprocN`."""
        return (f"remoteproc{self.core_index}#vdev0buffer", self.virtio, self.name)

    def attribute(self, name: str) -> bytes | None:
        """The text of the rpmsg device attribute `name`, as rpmsg_core.c shows it."""
        if name == "name":
            return f"{CHANNEL_NAME}\n".encode()
        if name in ("src", "dst"):
            # Linux's endpoint takes the same address as the firmware's in this simple setup.
            return f"{self.address:#x}\n".encode()
        return None

    def class_link(self) -> str:
        """The target of `sys/class/tty/ttyRPMSGk/device` for this channel's tty."""
        return "/".join(("../../remoteproc", f"remoteproc{self.core_index}", *self.parts))

    def bus_link(self) -> str:
        """The target of `sys/bus/rpmsg/devices/<name>`."""
        return "/".join(("../../../class/remoteproc", f"remoteproc{self.core_index}", *self.parts))


def tty_class_dir(host: HostRoot) -> Path:
    return host.sys / "class" / "tty"


def rpmsg_bus_dir(host: HostRoot) -> Path:
    return host.sys / "bus" / "rpmsg" / "devices"


class TtyPublisher:
    """Publishes data channels' ttys in the host root and numbers them.

    Indexes start after the consoles' and are never reused during one `up` (the kernel reuses
    the lowest one whose old tty is closed), so a stale open never reaches a newer firmware.
    """

    def __init__(self, host: HostRoot, first_index: int) -> None:
        self._host = host
        self._next = first_index
        self._lock = threading.Lock()

    def allocate(self) -> int:
        with self._lock:
            while True:
                index, self._next = self._next, self._next + 1
                node = self._host.dev / f"{TTY_PREFIX}{index}"
                # A link left by a killed simulator is ours to replace; anything else is not.
                if node.is_symlink() or not node.exists():
                    return index

    def publish_sysfs(self, device: RpmsgDevice, index: int) -> None:
        """The bus link and the tty's `device` link: what exists before the `/dev` node."""
        _replace_link(rpmsg_bus_dir(self._host) / device.name, device.bus_link())
        tty_dir = tty_class_dir(self._host) / f"{TTY_PREFIX}{index}"
        tty_dir.mkdir(exist_ok=True)
        _replace_link(tty_dir / "device", device.class_link())

    def dev_link(self, index: int) -> Path:
        link = self._host.dev / f"{TTY_PREFIX}{index}"
        if link.is_symlink():
            link.unlink()
        return link

    def withdraw_sysfs(self, device: RpmsgDevice, index: int) -> None:
        tty_dir = tty_class_dir(self._host) / f"{TTY_PREFIX}{index}"
        (tty_dir / "device").unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            tty_dir.rmdir()
        (rpmsg_bus_dir(self._host) / device.name).unlink(missing_ok=True)


def _replace_link(path: Path, target: str) -> None:
    if path.is_symlink():
        path.unlink()
    path.symlink_to(target)


def find_announce(window: bytes) -> int:
    """Where the bytes after the announce marker start in `window`, or -1 without one."""
    at = window.find(ANNOUNCE)
    return at + len(ANNOUNCE) if at >= 0 else -1


class DataChannel:
    """UART1 of one firmware run: FIFOs for QEMU, a relay, and once announced, a published tty."""

    def __init__(
        self, device: RpmsgDevice, publisher: TtyPublisher, *, core_id: str, directory: Path
    ) -> None:
        """The FIFOs go in `directory` (the core's state directory under the host root, so that
        what a killed simulator leaves stays under that root)."""
        self.device = device
        self._publisher = publisher
        self._log = get_logger("smarter-sim", core=core_id)
        directory.mkdir(parents=True, exist_ok=True)
        self._fifo_base = directory / "uart1"
        self._fifos = [Path(f"{self._fifo_base}{suffix}") for suffix in (".in", ".out")]
        fds: list[int] = []
        try:
            for fifo in self._fifos:
                fifo.unlink(missing_ok=True)  # left by a killed simulator
                os.mkfifo(fifo, 0o600)
                # Read-write: opening never blocks, and neither end sees EOF while QEMU is away.
                fds.append(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
            self._wake_read, self._wake_write = os.pipe()
        except OSError:
            for fd in fds:
                os.close(fd)
            self._remove_fifos()
            raise
        self._to_uart, self._from_uart = fds
        self._lock = threading.Lock()
        self._tty: Console | None = None
        self._index: int | None = None
        self._thread = threading.Thread(target=self._relay, name=f"uart1-{core_id}", daemon=True)

    def qemu_arguments(self) -> list[str]:
        """QEMU's second serial port (UART1) on the FIFOs `<base>.in` and `<base>.out`."""
        # QEMU's option syntax: a comma in a value is written twice.
        path = str(self._fifo_base).replace(",", ",,")
        return ["-chardev", f"pipe,id=uart1,path={path}", "-serial", "chardev:uart1"]

    def start(self) -> None:
        self._thread.start()

    @property
    def announced(self) -> bool:
        return self._index is not None

    @property
    def tty(self) -> Path | None:
        """`dev/ttyRPMSGk` while the channel is published."""
        console = self._tty
        return console.link if console is not None else None

    def close(self) -> None:
        """Withdraw the channel (`/dev` first) and hang up its tty; stop the relay."""
        if self._thread.is_alive():
            os.write(self._wake_write, b"x")
            self._thread.join()
        with self._lock:
            tty, self._tty = self._tty, None
            index = self._index
            if tty is not None:
                tty.close()
            if index is not None:
                self._publisher.withdraw_sysfs(self.device, index)
            self._index = None
        for fd in (self._to_uart, self._from_uart, self._wake_read, self._wake_write):
            os.close(fd)
        self._remove_fifos()
        if index is not None:
            self._log.info("data_channel_withdrawn", tty=f"{TTY_PREFIX}{index}")

    def _remove_fifos(self) -> None:
        for fifo in self._fifos:
            fifo.unlink(missing_ok=True)

    def _announce(self) -> Console:
        with self._lock:
            index = self._publisher.allocate()
            # The FUSE tree shows the rpmsg device from here on; then the links, `/dev` last.
            self._index = index
            self._publisher.publish_sysfs(self.device, index)
            self._tty = Console(self._publisher.dev_link(index))
        self._log.info("data_channel_announced", tty=f"{TTY_PREFIX}{index}")
        return self._tty

    def _relay(self) -> None:
        """Move bytes between UART1 and the tty until woken to stop."""
        tty: Console | None = None
        window = b""
        pending = b""  # written to the tty, not yet taken by UART1's FIFO
        poller = select.poll()
        poller.register(self._wake_read, select.POLLIN)
        poller.register(self._from_uart, select.POLLIN)
        while True:
            if tty is not None:
                poller.modify(tty.master, 0 if pending else select.POLLIN)
                poller.register(self._to_uart, select.POLLOUT if pending else 0)
            events = dict(poller.poll())
            if self._wake_read in events:
                return
            if events.get(self._from_uart, 0) & select.POLLIN:
                chunk = _read_some(self._from_uart)
                if tty is not None:
                    tty.write(chunk)
                else:
                    window += chunk
                    after = find_announce(window)
                    if after >= 0:
                        tty = self._announce()
                        poller.register(tty.master, select.POLLIN)
                        tty.write(window[after:])
                    else:
                        # Output before the announcement has nobody to go to.
                        window = window[-(len(ANNOUNCE) - 1) :]
            if tty is not None and events.get(tty.master, 0) & select.POLLIN:
                pending += _read_some(tty.master)
            if pending and events.get(self._to_uart, 0) & select.POLLOUT:
                try:
                    written = os.write(self._to_uart, pending)
                except BlockingIOError:
                    written = 0
                pending = pending[written:]


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, _CHUNK)
    except (BlockingIOError, InterruptedError):
        return b""
