"""One way for a program's command line to start and to fail.

`run` parses the arguments, sets logging up once (smarter_common.logs, from `--log-level`,
`--log-format` and the environment), runs the command, and turns an error that reaches it
into one line on stderr, `<program>: <message> (<hint>)`, and an exit code:

    0    done
    1    refused, or failed while running: a SmarterError, an OSError
    2    usage or configuration: argparse's usage error, a ConfigError, a bad log flag
    130  interrupted (SIGINT)

The line is written once, never also as a log entry. The exec'd programs keep their own
contracts: the CNI plugin answers with the spec's error JSON on stdout, the runtime with
runc's log entry and exit 1 (runtime_handler.errors).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from smarter_common.errors import ConfigError, SmarterError

if TYPE_CHECKING:
    import argparse

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Command = Callable[["argparse.Namespace"], "int | None"]


def exit_code(error: BaseException) -> int:
    """The documented exit code for an error that reached the command line."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, ConfigError | ValueError):
        return EXIT_USAGE
    return EXIT_FAILED


def failure_line(program: str, error: BaseException) -> str:
    """The one stderr line for `error`, newline included; a multi-line message is joined."""
    if isinstance(error, OSError) and not isinstance(error, SmarterError):
        where = f"{error.filename}: " if error.filename else ""
        text = f"{where}{error.strerror or error}"
    else:
        text = str(error)
    return f"{program}: {'; '.join(part for part in text.splitlines() if part.strip())}\n"


def fail(program: str, error: BaseException, stream: TextIO | None = None) -> int:
    """Say `error` in its one line; its exit code."""
    out = stream if stream is not None else sys.stderr
    out.write(failure_line(program, error))
    out.flush()
    return exit_code(error)


def run(
    program: str,
    parser: argparse.ArgumentParser,
    command: Command,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse `argv`, set logging up, run `command(args)`; the exit code (see the module)."""
    args = parser.parse_args(argv)  # a usage error: argparse's usage line, its message, exit 2
    try:
        configure_logging(args)
    except ValueError as error:  # --log-level chatty, SMARTER_LOG_FORMAT=xml
        return fail(program, error)
    try:
        code = command(args)
    except (SmarterError, OSError, KeyboardInterrupt) as error:
        return fail(program, error)
    return EXIT_OK if code is None else code


def configure_logging(args: argparse.Namespace) -> None:
    """The process's one logging setup, from the common flags when the parser has them."""
    from smarter_common import logs

    logs.configure(level=getattr(args, "log_level", None), fmt=getattr(args, "log_format", None))
