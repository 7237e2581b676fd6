"""The zipapp's first code, and the one routing table: who answers a call about a container.

A call about a container the runtime did not create (a sandbox, a sidecar) is runc's; one about
a firmware container (a directory under `<--root>/smarter-hybrid/`) is the runtime's. That
decision (`owner`), the commands it applies to (`CONTAINER_COMMANDS`) and the syntax of runc's
options (`parse_options`) are defined here once: runtime_handler.__main__ and
runtime_handler.runc_cli use them as the launcher does.

The zipapp's shebang runs this file's text before the archive is opened (see
scripts/build_zipapps.py), so the commonest calls (`start`, `state`, `kill`, `delete`... of a
sandbox or sidecar) cost no zipimport of the archive's directory, no runpy and no import: only
`posix` and `sys`, which the interpreter loaded at start. The `create` of a plain Linux container
(every container of every pod is created) is decided here too, by
runtime_handler.bundle.create_is_runcs: the build puts it (and only what it uses) past the text
the shebang runs, as bytecode and as source, and this file loads it for a create alone
(`CHUNK_PLACE`): a create opens no archive either, and no other call pays for it. Imported
(tests, main(), `python3 <zipapp>`), this file imports runtime_handler.bundle instead. Every
other call (list, firmware containers, a create that may be firmware or is a Linux container of
a pod holding firmware, malformed ids) is left to runtime_handler.__main__.main().
The rules of this exec'd path: docs/contributing.md.
"""

import posix
import sys

# No `typing` and no `from __future__` (each an import); the checker alone reads these names,
# and the annotations that need them are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    TakesValue = Callable[[str], bool]
    CreateDecision = Callable[[str, str, Callable[[str, str], bool]], bool]

DEFAULT_ROOT = "/run/runc"
# runtime_handler.state.STATE_SUBDIR (restated: importing it would cost the launcher its
# speed); tests/test_restated_constants.py holds them equal.
STATE_DIRECTORY = "smarter-hybrid"
# Who answers a call about one container.
RUNC = "runc"
RUNTIME = "runtime"
REFUSED = "refused"  # a malformed id: refused in runc's words before any path is built from it
# The pods holding firmware: `<root>/smarter-hybrid/.@pods/<sandbox-id>/<firmware container id>`
# (runtime_handler.data_channels writes it). '@' is in no container id, so no container's
# directory has that name; the dot keeps it out of listings of the containers' directories.
PODS_DIRECTORY = ".@pods"

GLOBAL_VALUE_OPTIONS = frozenset({"log", "log-format", "root", "criu", "rootless"})
# The commands about one existing container: a firmware container's are the runtime's, any
# other's runc's (`owner`).
CONTAINER_COMMANDS = frozenset(
    {
        "start", "state", "kill", "delete", "pause", "resume", "ps", "events", "exec", "update",
        "checkpoint", "restore",
    }
)
# Those the launcher decides itself, each with its options that take a value (the rest are
# switches); runtime_handler.runc_cli adds the other commands' options.
LAUNCHER_VALUE_OPTIONS: dict[str, frozenset[str]] = {
    "start": frozenset(),
    "state": frozenset(),
    "kill": frozenset(),
    "delete": frozenset(),
    "pause": frozenset(),
    "resume": frozenset(),
    "ps": frozenset({"format", "f"}),
    "events": frozenset({"interval"}),
    "create": frozenset({"bundle", "b", "console-socket", "pid-file", "preserve-fds"}),
}

# runc's container id rule (libcontainer's idRegex `^[\w+-\.]+$`, Go's ASCII `\w`), with `.`
# and `..` refused; checked without `re`, which is not loaded on the hot path.
ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")

# runtime_handler.settings (restated, held equal by tests/test_restated_constants.py): the
# variable naming runc, the names its settings file may hold, and the file's size limit.
RUNC_ENV = "SMARTER_RUNC"
SETTINGS_NAMES = frozenset(
    {
        "SMARTER_RUNTIME_HOST_ROOT", "SMARTER_RUNC", "SMARTER_START_TIMEOUT",
        "SMARTER_CONSOLE_TIMEOUT", "SMARTER_LOG_LEVEL", "SMARTER_CHANNEL_TIMEOUT",
    }
)
SETTINGS_SUFFIX = ".conf"
SETTINGS_MAX_BYTES = 65536
# Where runc is looked for when no setting names it (runtime_handler.passthrough uses these).
RUNC_CANDIDATES = ("/usr/sbin/runc", "/usr/bin/runc")
_S_IFMT = 0o170000
_S_IFDIR = 0o040000
# Where runtime_handler.bundle.create_is_runcs lies in the launcher's file, as bytecode and as
# source: (offset, bytecode size, source size), written by scripts/build_zipapps.py into the
# head it builds from this line; None when this module is imported.
CHUNK_PLACE: "tuple[int, int, int] | None" = None
# The frozen import system, whose MAGIC_NUMBER says which bytecode this interpreter runs.
_IMPORT_SYSTEM = "_frozen_importlib_external"


def id_problem(container_id: str | None) -> str | None:
    """runc's complaint about `container_id` (its words), or None when it is a valid id."""
    if not container_id:
        return "container id cannot be empty"
    if container_id in (".", "..") or not ID_CHARACTERS.issuperset(container_id):
        return "invalid container ID format"
    return None


def owner(command: str | None, root: str, container_id: str | None) -> str:
    """Who answers `command` about `container_id` under runc's `--root`: RUNC, RUNTIME or
    REFUSED. Not for create/run (decided by the bundle) nor list (both runc's and ours)."""
    if command not in CONTAINER_COMMANDS or not container_id:
        return RUNC  # no id: runc's usage error
    if id_problem(container_id):
        return REFUSED
    try:
        mode = posix.stat(f"{root}/{STATE_DIRECTORY}/{container_id}").st_mode
    except OSError:
        return RUNC
    return RUNTIME if mode & _S_IFMT == _S_IFDIR else RUNC


def pod_holds_firmware(root: str, sandbox_id: str | None) -> bool:
    """Whether the pod of sandbox `sandbox_id` holds a firmware container (one stat): only
    then does the create of its Linux containers look for data channels."""
    if not sandbox_id or id_problem(sandbox_id):
        return False
    try:
        mode = posix.stat(f"{root}/{STATE_DIRECTORY}/{PODS_DIRECTORY}/{sandbox_id}").st_mode
    except OSError:
        return False
    return mode & _S_IFMT == _S_IFDIR


def parse_options(
    words: list[str], index: int, takes_value: "TakesValue"
) -> tuple[dict[str, str | bool], int]:
    """runc's options in `words` from `index` on, and the index of the first word after them.

    Go's flag rules as runc's CLI library applies them: `-x` and `--x` are the same, a value is
    the next word or follows `=`, a switch is True, and parsing stops at the first positional
    word or after `--`. `takes_value(name)` says whether an option takes a value.
    """
    options: dict[str, str | bool] = {}
    while index < len(words):
        word = words[index]
        if word == "--":
            return options, index + 1
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
    return options, index


def root_of(global_options: dict[str, str | bool]) -> str:
    """runc's state directory from its global options."""
    root = global_options.get("root")
    return root if isinstance(root, str) and root else DEFAULT_ROOT


def is_runcs(argv: list[str], archive: str | None = None) -> bool:
    """Whether runc's arguments `argv` (no program name) are a call that is runc's, decided as
    runtime_handler.__main__.main() decides it, for the commands in LAUNCHER_VALUE_OPTIONS.
    `archive`: the launcher's file, which holds the create decision when built (`CHUNK_PLACE`)."""
    global_options, index = parse_options(argv, 0, GLOBAL_VALUE_OPTIONS.__contains__)
    values = LAUNCHER_VALUE_OPTIONS.get(argv[index]) if index < len(argv) else None
    if values is None:
        return False  # left to main()
    command = argv[index]
    options, index = parse_options(argv, index + 1, values.__contains__)
    container_id = argv[index] if index < len(argv) else None
    if command == "create":
        return _create_is_runcs(root_of(global_options), options, container_id, archive)
    return owner(command, root_of(global_options), container_id) == RUNC


def _create_is_runcs(
    root: str, options: dict[str, str | bool], container_id: str | None, archive: str | None
) -> bool:
    """runtime_handler.bundle's look at the bundle; a malformed or missing id, or a `--bundle`
    without a value, is main()'s to refuse."""
    if not container_id or id_problem(container_id):
        return False
    bundle = options.get("bundle", options.get("b", "."))
    if not isinstance(bundle, str):
        return False
    return _create_decision(archive)(root, bundle or ".", pod_holds_firmware)


def _create_decision(archive: str | None) -> "CreateDecision":
    """runtime_handler.bundle.create_is_runcs: loaded from the launcher's file when the build
    put it there (no zipimport, no package), else imported (the archive is on sys.path)."""
    if CHUNK_PLACE is not None and archive is not None:
        offset, compiled, size = CHUNK_PLACE
        try:
            fd = posix.open(archive, posix.O_RDONLY | posix.O_CLOEXEC)
            try:
                data = posix.pread(fd, compiled, offset)
                # marshal and the import system's magic number are loaded at every start.
                if data[:4] == getattr(sys.modules.get(_IMPORT_SYSTEM), "MAGIC_NUMBER", None):
                    code = sys.modules["marshal"].loads(data[4:])
                else:  # an interpreter of another bytecode
                    code = compile(posix.pread(fd, size, offset + compiled), archive, "exec")
            finally:
                posix.close(fd)
            namespace: dict[str, Any] = {"__name__": "runtime_handler.bundle"}
            exec(code, namespace)
            decision: CreateDecision = namespace["create_is_runcs"]
            return decision
        except (OSError, SyntaxError, ValueError, EOFError, TypeError, KeyError):
            pass  # a file not as built: the archive has the module itself
    if archive is not None:
        _import_from(archive)
    from runtime_handler.bundle import create_is_runcs

    return create_is_runcs


def _import_from(archive: str) -> None:
    """Put the archive first on sys.path (`python3 <zipapp>` has put it there already)."""
    if archive not in sys.path:
        sys.path.insert(0, archive)


def _runc(archive: str) -> str | None:
    """The runc to exec, as runtime_handler.passthrough finds it; None leaves the call to
    main(), which also says what is wrong with a settings file."""
    configured = _runc_setting(archive)
    if configured is None:
        return None
    from_env = posix.environ.get(RUNC_ENV.encode())
    if from_env:
        return from_env.decode(errors="surrogateescape")
    if configured:
        return configured
    for candidate in RUNC_CANDIDATES:
        if posix.access(candidate, posix.X_OK):
            return candidate
    return None  # main() searches PATH and reports failures


def _runc_setting(archive: str) -> str | None:
    """SMARTER_RUNC from the settings file beside the executable ('' when unset or no file);
    None when the file is unreadable or malformed (runtime_handler.settings' rules)."""
    try:
        fd = posix.open(archive + SETTINGS_SUFFIX, posix.O_RDONLY | posix.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return ""
    except OSError:
        return None
    try:
        # One read: a regular file gives all it has up to the size asked.
        data = posix.read(fd, SETTINGS_MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        posix.close(fd)
    if len(data) > SETTINGS_MAX_BYTES:
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
        if not equals or name not in SETTINGS_NAMES:
            return None
        if name == RUNC_ENV:
            value = rest.strip()
    return value


def main() -> None:
    """Exec runc for a call that is plainly runc's; run the runtime's main() for the rest."""
    if sys.argv[:1] == ["-c"]:
        del sys.argv[0]  # started by the shebang's bootstrap: argv[0] is now the archive
    archive, argv = sys.argv[0], sys.argv[1:]
    if not archive.startswith("/"):
        # The supervisor changes directory and still imports from the archive.
        archive = f"{posix.getcwd()}/{archive}"
    # The archive goes on sys.path only once something is imported from it: there, any import
    # (even create's `_json`, a standard extension) would first read its whole directory.
    if is_runcs(argv, archive):
        runc = _runc(archive)
        if runc is not None:
            # No contextlib here (an import); on failure main() says why runc cannot run.
            try:  # noqa: SIM105
                posix.execv(runc, [runc, *argv])
            except OSError:
                pass
    _import_from(archive)
    from runtime_handler.__main__ import main as runtime_main

    sys.exit(runtime_main())


if __name__ == "__main__":
    main()
