"""Long-running processes the gateway starts, each logged to a file and stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from smarter_common.deadline import Deadline
from smarter_common.errors import SmarterError
from smarter_common.logs import get_logger

log = get_logger("testbed.processes")


class ProcessError(SmarterError):
    """A program the gateway needs did not start or exited early."""


@dataclass
class Started:
    """One process we started: its name, Popen and log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ProcessError(
                f"{self.name} exited with status {code}",
                hint=f"its log ({self.log_path}) ends with:\n{self.log_tail()}",
            )


class Processes:
    """Starts processes and stops every one of them, newest first, by PID."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._started: list[Started] = []

    def start(
        self,
        name: str,
        command: Sequence[str | os.PathLike[str]],
        *,
        netns: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Started:
        """Start `command` in its own session (Ctrl-C reaches us, not it), maybe in `netns`."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        argv = [os.fspath(part) for part in command]
        if netns is not None:
            # nsenter joins only the network namespace: the process keeps our mounts and cgroups.
            argv = ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        started = Started(name, process, log_path)
        self._started.append(started)
        log.debug("started", program=name, pid=process.pid)
        return started

    def find(self, name: str) -> Started | None:
        """The running process started under `name`, if any."""
        return next((s for s in self._started if s.name == name), None)

    def wait_for(
        self, started: Started, ready: Callable[[], bool], *, timeout: float, what: str
    ) -> None:
        """Poll `ready` until it holds; fail with the process's log if it dies or times out."""
        deadline = Deadline(timeout)
        while not ready():
            started.check_alive()
            if deadline.expired():
                raise ProcessError(
                    f"{started.name} did not {what} within {timeout:.0f}s",
                    hint=f"its log ({started.log_path}) ends with:\n{started.log_tail()}",
                )
            deadline.sleep(0.05)

    def stop(self, started: Started, *, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; always reaped."""
        if not terminate(started.process, grace=grace):
            log.warning("killed", program=started.name, pid=started.process.pid)
        if started in self._started:
            self._started.remove(started)

    def stop_all(self) -> None:
        while self._started:
            self.stop(self._started[-1])


def terminate(process: subprocess.Popen[bytes], *, grace: float = 5.0) -> bool:
    """Stop a process we started, by its PID: SIGTERM, then SIGKILL after `grace` seconds;
    always reaped. Whether it ended within the grace period (or had already ended)."""
    if process.poll() is not None:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
        return True
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        return False


def read_lines(path: Path) -> list[str]:
    """A log file's lines as text; none while it does not exist (a process not yet started)."""
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []
