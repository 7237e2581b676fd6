"""runc's command line, parsed just far enough to route a call.

The runc shim calls us exactly as it calls runc: global options, a command, the command's
options, then positional arguments (`--root R --log L --log-format json kill --all ID 9`).
Options follow Go's flag rules as runc's CLI library applies them: `-x` and `--x` are the same,
a value is the next word or follows `=`, and parsing stops at the first positional word or `--`.
Stdlib only: this runs on every container operation, including those handed straight to runc.
"""

from __future__ import annotations

# `typing` costs milliseconds to import; the checker alone needs these names.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_ROOT = "/run/runc"

_GLOBAL_VALUE_OPTIONS = frozenset({"log", "log-format", "root", "criu", "rootless"})

# Options that take a value, per command; every other option is a switch. `update` and
# `checkpoint`/`restore` options nearly all take values, so there an unknown option does too.
_VALUE_OPTIONS: dict[str, frozenset[str]] = {
    "create": frozenset({"bundle", "b", "console-socket", "pid-file", "preserve-fds"}),
    "run": frozenset({"bundle", "b", "console-socket", "pid-file", "preserve-fds"}),
    "ps": frozenset({"format", "f"}),
    "events": frozenset({"interval"}),
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


# runc's container id rule (libcontainer's idRegex `^[\w+-\.]+$`, Go's ASCII `\w`), with `.`
# and `..` refused; checked without `re`, which is not loaded on the hot path.
_ID_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-."
)


def id_problem(container_id: str | None) -> str | None:
    """runc's complaint about `container_id` (its words), or None when it is a valid id."""
    if not container_id:
        return "container id cannot be empty"
    if container_id in (".", "..") or not _ID_CHARACTERS.issuperset(container_id):
        return "invalid container ID format"
    return None


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
    global_options, rest = _parse_options(argv, lambda name: name in _GLOBAL_VALUE_OPTIONS)
    if not rest:
        return _invocation(argv, global_options, None, {}, [])
    command, rest = rest[0], rest[1:]
    values = _VALUE_OPTIONS.get(command, frozenset())
    switches = _SWITCH_OPTIONS.get(command)
    if switches is not None:
        options, args = _parse_options(rest, lambda name: name not in switches)
    else:
        options, args = _parse_options(rest, lambda name: name in values)
    aliases = _LONG_NAMES.get(command, {})
    options = {aliases.get(name, name): value for name, value in options.items()}
    return _invocation(argv, global_options, command, options, args)


def _invocation(
    argv: list[str],
    global_options: dict[str, str | bool],
    command: str | None,
    options: dict[str, str | bool],
    args: list[str],
) -> Invocation:
    root = global_options.get("root")
    log = global_options.get("log")
    log_format = global_options.get("log-format")
    return Invocation(
        argv=list(argv),
        root=root if isinstance(root, str) and root else DEFAULT_ROOT,
        log=log if isinstance(log, str) and log else None,
        log_format=log_format if isinstance(log_format, str) else "text",
        debug=bool(global_options.get("debug")),
        command=command,
        options=options,
        args=args,
    )


def _parse_options(
    words: list[str], takes_value: Callable[[str], bool]
) -> tuple[dict[str, str | bool], list[str]]:
    options: dict[str, str | bool] = {}
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            return options, words[index + 1 :]
        if not word.startswith("-") or word == "-":
            break
        name, has_value, value = word.lstrip("-").partition("=")
        if has_value:
            options[name] = value
        elif takes_value(name) and index + 1 < len(words):
            index += 1
            options[name] = words[index]
        else:
            options[name] = True
        index += 1
    return options, words[index:]
