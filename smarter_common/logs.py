"""Structured logs, set up once per process, in one of two profiles.

- `daemon` (the daemons, the operator's subcommands, the CNI plugin's in-process work): JSON
  when the stream is not a terminal, readable key=value on one; `timestamp`, `level`, `event`.
- `runc` (smarter-hybrid-runtime's `--log` file): entries as runc writes them with logrus,
  `{"level":...,"msg":...,"time":...}` for `--log-format json`, `time="..." level=... msg="..."`
  for `text`; the runc shim shows the user the last `error` entry. Written by `RuncLogger`
  over `runc_entry`, with the standard library alone, never through structlog.

Events are short snake_case names (`core_started`, `pod_added`), the data goes in fields
(tests/common/test_event_names.py holds every call to it). Logs go to stderr by default: the
CNI plugin's stdout carries its result and a firmware container's stdout is the container's log.

structlog (~55 ms to import; it imports asyncio, ~10 MB resident) is imported only when
something is logged through it: the runtime's entries (`runc_entry`, `RuncLogger`) need the
standard library alone, so the exec'd runtime can refuse a call in runc's words and a firmware
container's supervisor, resident for the container's life, never holds it; `LazyLogger` lets
the exec'd CNI plugin log without paying for it when there is nothing to say.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any, Literal, TextIO

if TYPE_CHECKING:
    from collections.abc import Mapping

LOG_LEVEL_ENV = "SMARTER_LOG_LEVEL"
LOG_FORMAT_ENV = "SMARTER_LOG_FORMAT"

LogFormat = Literal["auto", "json", "console"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "console")
# runc's --log-format values.
RUNC_FORMATS = ("text", "json")
# The logging module's level numbers, without importing it (~10 ms on the exec'd paths).
_LEVELS = {
    "CRITICAL": 50,
    "FATAL": 50,
    "ERROR": 40,
    "WARN": 30,
    "WARNING": 30,
    "INFO": 20,
    "DEBUG": 10,
    "NOTSET": 0,
}
WARNING = _LEVELS["WARNING"]

# Characters logrus' text formatter leaves unquoted in a value.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._/@^+")


def resolve_format(requested: str | None, stream: TextIO) -> Literal["json", "console"]:
    """`json` or `console` from a flag value, the environment, or whether `stream` is a tty."""
    value = (requested or os.environ.get(LOG_FORMAT_ENV) or "auto").lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"log format {value!r} is not one of {', '.join(LOG_FORMATS)}")
    if value == "auto":
        return "console" if stream.isatty() else "json"
    return "json" if value == "json" else "console"


def resolve_level(requested: str | None, *, default: str = "info") -> int:
    """A logging level number from a name such as `info` (flag, else environment, else
    `default`)."""
    name = (requested or os.environ.get(LOG_LEVEL_ENV) or default).upper()
    level = _LEVELS.get(name)
    if level is None:
        raise ValueError(f"log level {name.lower()!r} is not one of debug, info, warning, error")
    return level


def configure(
    *,
    level: str | int | None = None,
    fmt: str | None = None,
    stream: Any = None,
) -> str:
    """Set up structlog for the whole process (the `daemon` profile); the format it writes
    (`json` or `console`, as `resolve_format`).

    `level` is a name or a number (None: SMARTER_LOG_LEVEL, else info).
    """
    import structlog

    out = stream if stream is not None else sys.stderr
    number = level if isinstance(level, int) else resolve_level(level)
    written = resolve_format(fmt, out)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if written == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    return written


def get_logger(name: str, **context: Any) -> Any:
    """A logger bound to the program or component `name` and any fixed context."""
    import structlog

    return structlog.get_logger().bind(logger=name, **context)


def runc_entry(
    message: str,
    *,
    level: str = "error",
    log_format: str = "text",
    fields: Mapping[str, Any] | None = None,
) -> str:
    """One entry of runc's log in `log_format` (`json`, else logrus `text`), newline included.

    `level`, `msg` and `time` come first, then `fields` in their order; a field named like one
    of those three replaces it (as a structlog field of the same name did). A value JSON has no
    form for is written as its str(): an entry is never lost to its data."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    extra = dict(fields or {})
    if log_format == "json":
        import json

        entry = {"level": level, "msg": message, "time": stamp, **extra}
        return json.dumps(entry, default=str) + "\n"
    pairs = [("time", stamp), ("level", level), ("msg", message), *extra.items()]
    return " ".join(f"{key}={_logfmt_value(value)}" for key, value in pairs) + "\n"


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text and all(char in _PLAIN for char in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class _LevelledLogger:
    """A structlog-style logger's level methods (`log.info("core_started", core=...)`): an entry
    below `_level` (a number, as `resolve_level` gives) is dropped, the others are `_write`'s."""

    _level: int

    def debug(self, event: str, **fields: Any) -> None:
        self._entry(10, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._entry(20, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._entry(30, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._entry(40, "error", event, fields)

    def _entry(self, number: int, level: str, event: str, fields: Mapping[str, Any]) -> None:
        if number >= self._level:
            self._write(level, event, fields)

    def _write(self, level: str, event: str, fields: Mapping[str, Any]) -> None:
        raise NotImplementedError


class RuncLogger(_LevelledLogger):
    """The runtime's logger: runc's entries (`runc_entry`) on `stream`, one write each.

    Called as a structlog logger is (`log.info("core_started", core=...)`): the event is runc's
    `msg`, the bound context (`bind`) and the call's fields follow it in that order, and entries
    below `level` (a number, as `resolve_level` gives) are not written. `log_format` is runc's
    `--log-format` (`json`, else logrus `text`). A write that fails is the stream's to handle.
    """

    def __init__(
        self,
        stream: TextIO | Any,
        *,
        level: int,
        log_format: str,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        self._stream = stream
        self._level = level
        self._format = "json" if log_format == "json" else "text"
        self._context = dict(context or {})

    @property
    def log_format(self) -> str:
        """What it writes: `json` or `text`."""
        return self._format

    def bind(self, **context: Any) -> RuncLogger:
        """The same logger with `context` added to every entry's fields."""
        return RuncLogger(
            self._stream,
            level=self._level,
            log_format=self._format,
            context={**self._context, **context},
        )

    def _write(self, level: str, event: str, fields: Mapping[str, Any]) -> None:
        merged = {**self._context, **fields}
        # The level is the method's, whatever the fields say: the shim looks for `error`.
        merged.pop("level", None)
        self._stream.write(runc_entry(event, level=level, log_format=self._format, fields=merged))


class LazyLogger(_LevelledLogger):
    """A logger for an exec'd program: the level is read once, at construction (a bad
    SMARTER_LOG_LEVEL is refused before any work), and structlog is imported and set up only
    when an entry passes it. `default_level` applies when SMARTER_LOG_LEVEL is unset."""

    def __init__(self, name: str, *, default_level: str = "warning", **context: Any) -> None:
        self._name = name
        self._default = default_level
        self._level = resolve_level(None, default=default_level)
        self._context = context

    def bind(self, **context: Any) -> LazyLogger:
        bound = LazyLogger.__new__(LazyLogger)
        bound._name, bound._default, bound._level = self._name, self._default, self._level
        bound._context = {**self._context, **context}
        return bound

    def _write(self, level: str, event: str, fields: Mapping[str, Any]) -> None:
        global _lazily_configured
        if not _lazily_configured:
            import structlog

            if not structlog.is_configured():
                configure(level=self._level)
            _lazily_configured = True
        getattr(get_logger(self._name, **self._context), level)(event, **fields)


_lazily_configured = False
