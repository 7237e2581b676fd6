"""The zipapp's first code: a call about a container that is not ours goes to runc at once.

The zipapp's shebang runs this file's text before the archive is opened (see
scripts/build_zipapps.py), so the commonest calls (`start`, `state`, `kill`, `delete`... of a
sandbox or sidecar) cost no zipimport of the archive's directory, no runpy and no import: only
`posix` and `sys`, which the interpreter loaded at start. It decides exactly as
runtime_handler.__main__ does (an id with no directory under `<--root>/smarter-hybrid/` is
runc's) and leaves every other call to that module's main(): create, firmware containers,
malformed ids, unusual options.
"""

import posix
import sys

_RUNC_ENV = b"SMARTER_RUNC"
# runtime_handler.settings.NAMES: the names its settings file may hold.
_SETTINGS_NAMES = frozenset(
    {
        "SMARTER_RUNTIME_HOST_ROOT", "SMARTER_RUNC", "SMARTER_START_TIMEOUT",
        "SMARTER_CONSOLE_TIMEOUT", "SMARTER_LOG_LEVEL",
    }
)
_SETTINGS_MAX_BYTES = 65536
_RUNC_CANDIDATES = ("/usr/sbin/runc", "/usr/bin/runc")
_GLOBAL_VALUE_OPTIONS = frozenset({"log", "log-format", "root", "criu", "rootless"})
_ASKS_US = frozenset({"help", "h", "version", "v"})
# The commands decided here, each with its options that take a value (the rest are switches).
_ID_COMMANDS: dict[str, frozenset[str]] = {
    "start": frozenset(),
    "state": frozenset(),
    "kill": frozenset(),
    "delete": frozenset(),
    "pause": frozenset(),
    "resume": frozenset(),
    "ps": frozenset({"format", "f"}),
    "events": frozenset({"interval"}),
}
# runc's id rule, as runtime_handler.cli.id_problem applies it.
_ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")
_S_IFMT = 0o170000
_S_IFDIR = 0o040000


def is_runcs(argv: list[str]) -> bool:
    """Whether runc's arguments `argv` (no program name) are plainly a call for runc."""
    parsed = _options(argv, 0, _GLOBAL_VALUE_OPTIONS)
    if parsed is None:
        return False
    index, global_options = parsed
    if not _ASKS_US.isdisjoint(global_options) or index >= len(argv):
        return False
    root = global_options.get("root") or "/run/runc"
    values = _ID_COMMANDS.get(argv[index])
    if values is None:
        return False
    parsed = _options(argv, index + 1, values)
    if parsed is None:
        return False
    index = parsed[0]
    if index >= len(argv) or not argv[index]:
        return True  # no id: runc's usage error
    container_id = argv[index]
    if container_id in (".", "..") or not _ID_CHARACTERS.issuperset(container_id):
        return False
    try:
        mode = posix.stat(f"{root}/smarter-hybrid/{container_id}").st_mode
    except OSError:
        return True
    return mode & _S_IFMT != _S_IFDIR


def _options(
    argv: list[str], index: int, with_values: frozenset[str]
) -> tuple[int, dict[str, str]] | None:
    """The options from `index` on and where they end; None at `--` (left to main())."""
    seen: dict[str, str] = {}
    while index < len(argv):
        word = argv[index]
        if word == "--":
            return None
        if not word.startswith("-") or word == "-":
            break
        name, has_value, value = word.lstrip("-").partition("=")
        if name in with_values and not has_value and index + 1 < len(argv):
            index += 1
            value = argv[index]
        seen[name] = value
        index += 1
    return index, seen


def _runc(archive: str) -> str | None:
    """The runc to exec, as runtime_handler.passthrough finds it; None leaves the call to
    main(), which also says what is wrong with a settings file."""
    configured = _runc_setting(archive)
    if configured is None:
        return None
    from_env = posix.environ.get(_RUNC_ENV)
    if from_env:
        return from_env.decode(errors="surrogateescape")
    if configured:
        return configured
    for candidate in _RUNC_CANDIDATES:
        if posix.access(candidate, posix.X_OK):
            return candidate
    return None  # main() searches PATH and reports failures


def _runc_setting(archive: str) -> str | None:
    """SMARTER_RUNC from the settings file beside the executable ('' when unset or no file);
    None when the file is unreadable or malformed (runtime_handler.settings' rules)."""
    try:
        fd = posix.open(archive + ".conf", posix.O_RDONLY | posix.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return ""
    except OSError:
        return None
    try:
        # One read: a regular file gives all it has up to the size asked.
        data = posix.read(fd, _SETTINGS_MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        posix.close(fd)
    if len(data) > _SETTINGS_MAX_BYTES:
        return None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    value = ""
    for raw in text.split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, rest = line.partition("=")
        name = name.strip()
        if not equals or name not in _SETTINGS_NAMES:
            return None
        if name == "SMARTER_RUNC":
            value = rest.strip()
    return value


def main() -> None:
    """Exec runc for a call that is plainly runc's; run the runtime's main() for the rest."""
    if sys.argv[:1] == ["-c"]:
        del sys.argv[0]  # started by the shebang's bootstrap: argv[0] is now the archive
    archive, argv = sys.argv[0], sys.argv[1:]
    if is_runcs(argv):
        runc = _runc(archive)
        if runc is not None:
            # No contextlib here (an import); on failure main() says why runc cannot run.
            try:  # noqa: SIM105
                posix.execv(runc, [runc, *argv])
            except OSError:
                pass
    if not archive.startswith("/"):
        # The supervisor changes directory and still imports from the archive.
        archive = f"{posix.getcwd()}/{archive}"
    if archive not in sys.path:
        sys.path.insert(0, archive)
    from runtime_handler.__main__ import main as runtime_main

    sys.exit(runtime_main())


if __name__ == "__main__":
    main()
