"""Structured logs: JSON in production (not a terminal), readable key=value on a terminal.

Logs go to stderr by default: the CNI plugin's stdout carries its result and a firmware
container's stdout is the container's log.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal, TextIO

import structlog

LOG_LEVEL_ENV = "SMARTER_LOG_LEVEL"
LOG_FORMAT_ENV = "SMARTER_LOG_FORMAT"

LogFormat = Literal["auto", "json", "console"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "console")


def resolve_format(requested: str | None, stream: TextIO) -> Literal["json", "console"]:
    """`json` or `console` from a flag value, the environment, or whether `stream` is a tty."""
    value = (requested or os.environ.get(LOG_FORMAT_ENV) or "auto").lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"log format {value!r} is not one of {', '.join(LOG_FORMATS)}")
    if value == "auto":
        return "console" if stream.isatty() else "json"
    return "json" if value == "json" else "console"


def resolve_level(requested: str | None) -> int:
    """A logging level number from a name such as `info` (flag, else environment, else info)."""
    name = (requested or os.environ.get(LOG_LEVEL_ENV) or "info").upper()
    level = logging.getLevelNamesMapping().get(name)
    if level is None:
        raise ValueError(f"log level {name.lower()!r} is not one of debug, info, warning, error")
    return level


def configure(
    *, level: str | None = None, fmt: str | None = None, stream: TextIO | None = None
) -> None:
    """Set up structlog for the whole process."""
    out = stream if stream is not None else sys.stderr
    renderer: Any
    if resolve_format(fmt, out) == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(resolve_level(level)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **context: Any) -> Any:
    """A logger bound to the program or component `name` and any fixed context."""
    return structlog.get_logger().bind(logger=name, **context)
