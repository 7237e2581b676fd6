"""The typed edge of mfusepy (which ships no type information), and a way to end its loop.

libfuse ends its loop by itself only when the kernel ends the connection, which an unmount does
only once no file on the filesystem is open: a reader holding `state` open keeps a detached
mount, and the loop, alive. So the loop is ended as libfuse's own SIGTERM handler ends it: the
session is marked exited (`fuse_exit`) and the loop thread's wait is interrupted by a signal;
libfuse then stops its workers, closes `/dev/fuse` (the kernel aborts the connection, and the
reader gets ENOTCONN, as after an unplugged device) and unmounts.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from pathlib import Path
from types import FrameType

from sim.remoteproc_fs import RemoteprocFs

# Sent to the loop thread only, to interrupt its wait; libfuse's request threads block it.
WAKE_SIGNAL = signal.SIGUSR1


class FuseLoop:
    """The FUSE loop serving `fs` at `mount_point`; `serve` on one thread, `end` from another.

    Create it on the main thread: it installs the handler of WAKE_SIGNAL, whose default action
    would end the process.
    """

    def __init__(self, fs: RemoteprocFs, mount_point: Path) -> None:
        self.fs = fs
        self.mount_point = mount_point
        signal.signal(WAKE_SIGNAL, _interrupt_only)
        self._lock = threading.Lock()
        # libfuse's `struct fuse *`, from the filesystem's init until its destroy: while it is
        # set, the loop has not returned, so the pointer and the loop thread are valid.
        self._fuse: int | None = None
        self._thread_id: int | None = None
        self._exiting = False
        fs.on_init.insert(0, self._initialised)
        fs.on_destroy.append(self._destroyed)

    def serve(self) -> None:
        """Mount the filesystem and serve requests until it is unmounted or `end` is called."""
        import mfusepy

        self._thread_id = threading.get_ident()
        mfusepy.FUSE(
            self.fs,
            str(self.mount_point),
            foreground=True,
            allow_other=True,
            # The kernel enforces the modes, as sysfs does: only root writes `state` and `firmware`.
            default_permissions=True,
            fsname="smarter-sim",
            subtype="smarter-sim",
            direct_io=True,
            attr_timeout=0,
            entry_timeout=0,
            negative_timeout=0,
        )

    def end(self) -> bool:
        """Ask the loop to end and unmount; False when it is not serving (not yet, or no more).

        The wake-up may land just before the loop thread starts waiting, so call it again while
        the loop thread lives.
        """
        import mfusepy

        with self._lock:
            if self._fuse is None or self._thread_id is None:
                return False
            if not self._exiting:
                mfusepy._libfuse.fuse_exit(ctypes.c_void_p(self._fuse))
                self._exiting = True
            signal.pthread_kill(self._thread_id, WAKE_SIGNAL)
            return True

    def _initialised(self) -> None:
        import mfusepy

        # Called by libfuse inside its context, where the context names this loop's fuse.
        fuse = mfusepy._libfuse.fuse_get_context().contents.fuse
        with self._lock:
            self._fuse = fuse

    def _destroyed(self) -> None:
        with self._lock:
            self._fuse = None


def _interrupt_only(signum: int, frame: FrameType | None) -> None:
    """The wake signal's handler: its delivery interrupts the loop's wait, nothing else."""
