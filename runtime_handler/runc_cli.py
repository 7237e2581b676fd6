"""runc's command line, parsed into what the runtime needs: global options, command, options, ids.

The runc shim calls us exactly as it calls runc: global options, a command, the command's
options, then positional arguments (`--root R --log L --log-format json kill --all ID 9`).
The syntax, the global options, the options of the commands the launcher decides and the id
rule are runtime_handler.route's, the launcher's routing table; this module adds the options
of runc's other commands. Stdlib only: this runs on every call the launcher leaves to the runtime.
"""

from __future__ import annotations

from runtime_handler.route import (
    DEFAULT_ROOT,
    GLOBAL_VALUE_OPTIONS,
    LAUNCHER_VALUE_OPTIONS,
    id_problem,
    parse_options,
    root_of,
)

__all__ = ["DEFAULT_ROOT", "Invocation", "id_problem", "parse"]

# Options that take a value, per command; every other option is a switch. `update` and
# `checkpoint`/`restore` options nearly all take values, so there an unknown option does too.
_VALUE_OPTIONS: dict[str, frozenset[str]] = {
    **LAUNCHER_VALUE_OPTIONS,
    "run": LAUNCHER_VALUE_OPTIONS["create"],
    "list": frozenset({"format", "f"}),
    "spec": frozenset({"bundle", "b"}),
    "exec": frozenset(
        {
            "console-socket", "cwd", "env", "e", "user", "u", "additional-gids", "g",
            "process", "p", "pid-file", "process-label", "apparmor", "cap", "c",
            "preserve-fds", "cgroup",
        }
    ),
}
_SWITCH_OPTIONS: dict[str, frozenset[str]] = {
    "update": frozenset({"help", "h"}),
    "checkpoint": frozenset(
        {
            "leave-running", "tcp-established", "ext-unix-sk", "shell-job", "lazy-pages",
            "file-locks", "pre-dump", "auto-dedup", "help", "h",
        }
    ),
    "restore": frozenset(
        {
            "tcp-established", "ext-unix-sk", "shell-job", "file-locks", "detach", "d",
            "no-subreaper", "no-pivot", "auto-dedup", "lazy-pages", "help", "h",
        }
    ),
}
_LONG_NAMES: dict[str, dict[str, str]] = {
    "create": {"b": "bundle"},
    "run": {"b": "bundle", "d": "detach"},
    "kill": {"a": "all"},
    "delete": {"f": "force"},
    "ps": {"f": "format"},
}


class Invocation:
    """One call of the runtime: runc's global options, the command, its options and arguments.

    A plain class rather than a dataclass: importing `dataclasses` costs more than this parse.
    """

    __slots__ = ("args", "argv", "command", "debug", "log", "log_format", "options", "root")

    def __init__(
        self,
        argv: list[str],
        *,
        root: str = DEFAULT_ROOT,
        log: str | None = None,
        log_format: str = "text",
        debug: bool = False,
        command: str | None = None,
        options: dict[str, str | bool] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.argv = argv
        self.root = root
        self.log = log
        self.log_format = log_format
        self.debug = debug
        self.command = command
        self.options: dict[str, str | bool] = options or {}
        self.args: list[str] = args or []

    @property
    def container_id(self) -> str | None:
        """The container the command is about: its first positional argument."""
        return self.args[0] if self.args else None

    def option(self, name: str) -> str | None:
        value = self.options.get(name)
        return value if isinstance(value, str) else None

    def switch(self, name: str) -> bool:
        value = self.options.get(name)
        if isinstance(value, str):
            return value.lower() in ("1", "t", "true")
        return bool(value)


def parse(argv: list[str]) -> Invocation:
    """Parse runc's arguments (without the program name); never fails, unknown words pass."""
    global_options, index = parse_options(argv, 0, GLOBAL_VALUE_OPTIONS.__contains__)
    log = global_options.get("log")
    log_format = global_options.get("log-format")
    invocation = Invocation(
        argv=list(argv),
        root=root_of(global_options),
        log=log if isinstance(log, str) and log else None,
        log_format=log_format if isinstance(log_format, str) else "text",
        debug=bool(global_options.get("debug")),
    )
    if index >= len(argv):
        return invocation
    command = invocation.command = argv[index]
    switches = _SWITCH_OPTIONS.get(command)
    values = _VALUE_OPTIONS.get(command, frozenset())
    options, index = parse_options(
        argv,
        index + 1,
        (lambda name: name not in switches) if switches is not None else values.__contains__,
    )
    aliases = _LONG_NAMES.get(command, {})
    invocation.options = {aliases.get(name, name): value for name, value in options.items()}
    invocation.args = argv[index:]
    return invocation
