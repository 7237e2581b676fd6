"""The runtime's own settings: its environment first, then its settings file, then defaults.

containerd execs every runtime and CNI plugin with containerd's own environment, so a variable
shared by several programs (the old `SMARTER_HOST_ROOT`) redirects all of them at once. The
runtime therefore reads only variables named for it, and a settings file beside the executable
as it was exec'd (symlinks not resolved): `/usr/local/bin/smarter-hybrid-runtime.conf`, lines
`NAME=value`, blank lines and `#` comments ignored. An unknown name or a malformed line is an
error naming the file and line; a missing file means defaults. A value is checked where it is
used, so a bad timeout refuses firmware calls but never the calls handed to runc.

Stdlib only: every call that is not handed straight to runc by the launcher loads this.
runtime_handler/route.py restates the file's syntax (it cannot import) and must agree with it.
"""

from __future__ import annotations

import os
import sys

from runtime_handler.errors import RuntimeCallError

# `typing` costs milliseconds to import; the checker alone needs these names.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

HOST_ROOT_ENV = "SMARTER_RUNTIME_HOST_ROOT"
RUNC_ENV = "SMARTER_RUNC"
START_TIMEOUT_ENV = "SMARTER_START_TIMEOUT"
CONSOLE_TIMEOUT_ENV = "SMARTER_CONSOLE_TIMEOUT"
LOG_LEVEL_ENV = "SMARTER_LOG_LEVEL"
CHANNEL_TIMEOUT_ENV = "SMARTER_CHANNEL_TIMEOUT"
NAMES = (
    HOST_ROOT_ENV, RUNC_ENV, START_TIMEOUT_ENV, CONSOLE_TIMEOUT_ENV, LOG_LEVEL_ENV,
    CHANNEL_TIMEOUT_ENV,
)
FILE_SUFFIX = ".conf"

DEFAULT_HOST_ROOT = "/"
DEFAULT_START_TIMEOUT = 10.0
MAX_START_TIMEOUT = 600.0
DEFAULT_CONSOLE_TIMEOUT = 2.0
MAX_CONSOLE_TIMEOUT = 60.0
DEFAULT_CHANNEL_TIMEOUT = 10.0
MAX_CHANNEL_TIMEOUT = 600.0
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LOG_LEVEL = "info"
# A settings file is a few lines; anything bigger is not one.
_MAX_FILE_BYTES = 65536


class SettingsError(RuntimeCallError):
    """The settings file or one of the runtime's variables cannot be used as written."""


class Settings:
    """Each setting's text and where it came from: `<file>:<line>`, or "" for the environment."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, tuple[str, str]] | None = None) -> None:
        self._values = values or {}

    def source(self, name: str) -> str | None:
        """Where `name` was set ("" for the environment), None when it was not."""
        found = self._values.get(name)
        return found[1] if found else None

    def text(self, name: str) -> str | None:
        found = self._values.get(name)
        return found[0] if found else None

    @property
    def host_root(self) -> str:
        """The directory standing for the host's / (sysfs, /dev, /lib/firmware, /run)."""
        value = self.text(HOST_ROOT_ENV) or DEFAULT_HOST_ROOT
        if not value.startswith("/"):
            raise self._bad(HOST_ROOT_ENV, "must be an absolute directory")
        if not os.path.isdir(value):
            raise self._bad(HOST_ROOT_ENV, "is not a directory")
        return value

    @property
    def runc(self) -> str | None:
        """The runc named by the settings; None leaves the choice to the usual places."""
        return self.text(RUNC_ENV)

    @property
    def start_timeout(self) -> float:
        return self._seconds(START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT, MAX_START_TIMEOUT)

    @property
    def console_timeout(self) -> float:
        # 0 is allowed: no waiting, the /dev/ttyRPMSG<N> guess at once.
        return self._seconds(
            CONSOLE_TIMEOUT_ENV, DEFAULT_CONSOLE_TIMEOUT, MAX_CONSOLE_TIMEOUT, zero_ok=True
        )

    @property
    def channel_timeout(self) -> float:
        # 0 is allowed: a sidecar takes the data channels there are at once, or is refused.
        return self._seconds(
            CHANNEL_TIMEOUT_ENV, DEFAULT_CHANNEL_TIMEOUT, MAX_CHANNEL_TIMEOUT, zero_ok=True
        )

    @property
    def log_level(self) -> str:
        value = (self.text(LOG_LEVEL_ENV) or DEFAULT_LOG_LEVEL).lower()
        if value not in LOG_LEVELS:
            raise self._bad(LOG_LEVEL_ENV, f"must be one of {', '.join(LOG_LEVELS)}")
        return value

    def check(self) -> None:
        """Raise SettingsError for the first setting that cannot be used."""
        for name in NAMES:
            getattr(self, _PROPERTIES[name])

    def _seconds(
        self, name: str, default: float, maximum: float, *, zero_ok: bool = False
    ) -> float:
        text = self.text(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        # Written so that NaN and infinities fail too.
        if not (0.0 <= value <= maximum) or (value == 0.0 and not zero_ok):
            lowest = "0 or more" if zero_ok else "more than 0"
            raise self._bad(name, f"must be a number of seconds, {lowest} and at most {maximum:g}")
        return value

    def _bad(self, name: str, problem: str) -> SettingsError:
        where = self.source(name)
        said = f"{where}: {name}" if where else f"environment variable {name}"
        return SettingsError(f"{said}={self.text(name)!r} {problem}", hint=_HINT)


_PROPERTIES = {
    HOST_ROOT_ENV: "host_root",
    RUNC_ENV: "runc",
    START_TIMEOUT_ENV: "start_timeout",
    CONSOLE_TIMEOUT_ENV: "console_timeout",
    LOG_LEVEL_ENV: "log_level",
    CHANNEL_TIMEOUT_ENV: "channel_timeout",
}
_HINT = "fix the smarter-hybrid-runtime settings file or containerd's environment"


def file_for(executable: str) -> str | None:
    """The settings file of the program exec'd as `executable` (None when it has no path)."""
    if not executable or executable == "-c":
        return None
    return executable + FILE_SUFFIX


def parse_file(text: str, path: str) -> dict[str, tuple[str, str]]:
    """`NAME=value` lines of a settings file: each name's value and `<path>:<line>`.

    A later line for the same name wins, as in a shell's env file. An empty value counts as
    not set, as an empty variable does.
    """
    values: dict[str, tuple[str, str]] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        name, equals, value = line.partition("=")
        name = name.strip()
        if not equals or not name:
            raise SettingsError(
                f"{where}: malformed line {line!r}: expected NAME=value",
                hint=f"settings this file takes: {', '.join(NAMES)}",
            )
        if name not in NAMES:
            raise SettingsError(
                f"{where}: unknown setting {name!r}",
                hint=f"settings this file takes: {', '.join(NAMES)}",
            )
        if value.strip():
            values[name] = (value.strip(), where)
        else:
            values.pop(name, None)
    return values


def read_file(path: str) -> dict[str, tuple[str, str]]:
    """The settings in the file at `path`; none when there is no such file."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(_MAX_FILE_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as error:
        raise SettingsError(
            f"cannot read settings file {path}: {error.strerror}", hint=_HINT
        ) from None
    if len(data) > _MAX_FILE_BYTES:
        raise SettingsError(
            f"settings file {path} is over {_MAX_FILE_BYTES} bytes: not a settings file",
            hint=_HINT,
        )
    try:
        text = data.decode()
    except UnicodeDecodeError as error:
        raise SettingsError(
            f"settings file {path} is not UTF-8 text (byte {error.start})", hint=_HINT
        ) from None
    return parse_file(text, path)


def load(executable: str, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of the runtime exec'd as `executable`: its variables over its file."""
    env = os.environ if environ is None else environ
    path = file_for(executable)
    values = read_file(path) if path else {}
    for name in NAMES:
        configured = env.get(name)
        if configured:
            values[name] = (configured, "")
    return Settings(values)


_current: Settings | None = None


def current() -> Settings:
    """This process's settings, read once (a forked supervisor keeps its parent's)."""
    global _current
    if _current is None:
        _current = load(sys.argv[0] if sys.argv else "")
    return _current


def use(settings: Settings | None) -> None:
    """Make `settings` this process's (None: read them again at the next `current()`)."""
    global _current
    _current = settings
