"""The plugin's side of the agent: hand the invocation over the agent's unix socket.

The fast path imports nothing but `os` and `_socket`: no json (with re, ~8 ms on a Debian
python3) and no socket module (~6 ms). The agent parses and validates exactly as the plugin
would, and answers with the exit status and the bytes to print.

Who does the work is decided by what the plugin knows happened to the request:
- not delivered (no socket, nobody listening, backlog full, the agent's read cut short) or
  delivered and the connection closed without an answer (the agent died), or the agent says
  `defer`: `AgentUnavailableError`, the plugin does the work itself;
- delivered and no answer within the answer timeout: `AgentTimeoutError`. The agent may still
  be doing the work, so the plugin must not do it too (two ADDs of one attachment would undo
  each other); it reports code 11, try again later.

The plugin's settings (`load_settings`) are its own: `SMARTER_CNI_HOST_ROOT` and
`SMARTER_CNI_AGENT_TIMEOUT` from its environment, else from `<executable>.conf` beside the
plugin as it was exec'd, else the defaults. Never `SMARTER_HOST_ROOT`: containerd execs the
plugin with its own environment, which may carry the host root meant for the runtime.

In the zipapp this module is also the launcher (`main`): the file's first bytes, run by the
shebang before the archive is opened, so a request the agent answers costs no zipimport, no
runpy and no import at all; only a fallback or an operator's subcommand reads the archive.

Wire format, one request per connection, both items as netstrings (`<len>:<bytes>,`): the
`CNI_*` environment (`NAME=VALUE` joined by NUL) and stdin; the plugin then shuts down its
writing side. The agent answers `<exit status>\\n<stdout bytes>` and closes, or `defer\\n` when
the plugin should do the work itself.
"""

from __future__ import annotations

import _socket
import os
import sys

# Not `from typing import ...`: importing typing costs every exec ~2.5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

FORWARDED = frozenset({"ADD", "DEL", "CHECK", "STATUS", "GC"})
# The spec versions smarter-cni speaks (here, not in cni.request: the launcher needs them too).
SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
# What an error says when the configuration names no version.
DEFAULT_VERSION = "1.1.0"
ENV_NAMES = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
DEFAULT_SOCKET = "/var/lib/smarter-cni/agent.sock"
CONNECT_TIMEOUT = 0.5
ANSWER_TIMEOUT = 10.0
# Seconds to wait for the agent's answer, instead of ANSWER_TIMEOUT.
ANSWER_TIMEOUT_ENV = "SMARTER_CNI_AGENT_TIMEOUT"
MAX_ANSWER_TIMEOUT = 3600.0
# The directory standing for the host's `/`: where the state dir and CNI_NETNS are found.
HOST_ROOT_ENV = "SMARTER_CNI_HOST_ROOT"
SETTING_NAMES = (HOST_ROOT_ENV, ANSWER_TIMEOUT_ENV)
SETTINGS_SUFFIX = ".conf"
# The code of a settings error: libcni's own for a failure it has no better code for.
SETTINGS_ERROR = 999
MAX_MESSAGE = 4 << 20
# The agent's answer when the plugin should do the work itself (it cannot see the netns).
DEFER = b"defer\n"
# The spec's "try again later" (cni.errors.TRY_AGAIN_LATER, not imported on the fast path).
TRY_AGAIN_LATER = 11


class SettingsError(Exception):
    """A setting of the plugin is unusable: `msg` names where it is, `details` what is wrong."""

    def __init__(self, msg: str, details: str) -> None:
        super().__init__(f"{msg}: {details}")
        self.msg = msg
        self.details = details


class Settings:
    """What the plugin was told through its environment or its settings file.

    A plain class: importing dataclasses costs every exec ~10 ms.
    """

    __slots__ = ("answer_timeout", "host_root")

    def __init__(self, host_root: str = "/", answer_timeout: float = ANSWER_TIMEOUT) -> None:
        self.host_root = host_root
        self.answer_timeout = answer_timeout

    def __repr__(self) -> str:
        return f"Settings(host_root={self.host_root!r}, answer_timeout={self.answer_timeout!r})"


def settings_path(executable: str) -> str:
    """The settings file of the plugin exec'd as `executable` (symlinks deliberately kept)."""
    return executable + SETTINGS_SUFFIX


def load_settings(environ: Mapping[str, str], executable: str) -> Settings:
    """The plugin's settings: its own environment first, then its settings file, then defaults.

    One open() of the file beside `executable`; a missing file is no error. SettingsError
    names the file and line, or the variable, of anything unusable.
    """
    path = settings_path(executable)
    try:
        with open(path, "rb") as stream:
            text = stream.read().decode("utf-8", "replace")
    except (FileNotFoundError, NotADirectoryError):
        text = ""
    except OSError as error:
        raise SettingsError(
            f"cannot read the settings file {path}", error.strerror or str(error)
        ) from None
    found = {
        name: (value, f"{path} line {number}") for name, value, number in parse_settings(text, path)
    }
    for name in SETTING_NAMES:
        if environ.get(name):
            found[name] = (environ[name], f"the environment variable {name}")
    settings = Settings()
    if HOST_ROOT_ENV in found:
        settings.host_root = _host_root(*found[HOST_ROOT_ENV])
    if ANSWER_TIMEOUT_ENV in found:
        settings.answer_timeout = _answer_timeout(*found[ANSWER_TIMEOUT_ENV])
    return settings


def parse_settings(text: str, path: str) -> list[tuple[str, str, int]]:
    """(name, value, line number) of each `NAME=value` line; SettingsError names a bad line.

    Blank lines and lines starting with `#` are skipped; whitespace around the line, the name
    and the value is stripped, nothing else (no quotes). An empty value means the default.
    """
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, value = line.partition("=")
        name = name.strip()
        if not equals or not name:
            raise SettingsError(
                f"invalid settings file {path} line {number}",
                f"{line!r} is not NAME=value",
            )
        if name not in SETTING_NAMES:
            raise SettingsError(
                f"invalid settings file {path} line {number}",
                f"unknown setting {name!r}: smarter-cni reads {', '.join(SETTING_NAMES)}",
            )
        if value.strip():
            found.append((name, value.strip(), number))
    return found


def _host_root(value: str, where: str) -> str:
    if not value.startswith("/"):
        raise SettingsError(
            f"invalid setting in {where}",
            f"{HOST_ROOT_ENV}={value!r}: expected an absolute directory (default /)",
        )
    return value


def _answer_timeout(value: str, where: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= MAX_ANSWER_TIMEOUT:  # also refuses nan
        raise SettingsError(
            f"invalid setting in {where}",
            f"{ANSWER_TIMEOUT_ENV}={value!r}: expected seconds, more than 0 and at most"
            f" {MAX_ANSWER_TIMEOUT:g} (default {ANSWER_TIMEOUT:g})",
        )
    return seconds


class MessageTooLargeError(OSError):
    """More than MAX_MESSAGE bytes arrived; `head` holds what was read."""

    def __init__(self, head: bytes) -> None:
        super().__init__(f"message larger than {MAX_MESSAGE} bytes")
        self.head = head


class AgentUnavailableError(Exception):
    """The agent could not be asked; the plugin should do the work in-process."""


class AgentTimeoutError(Exception):
    """The agent has the request but did not answer in time; nobody else may do the work."""


def environment_of(environ: Mapping[str, str]) -> dict[str, str]:
    """The `CNI_*` variables of `environ`: all the agent needs besides stdin."""
    return {name: environ[name] for name in ENV_NAMES if name in environ}


def socket_path_for(stdin: bytes, host_root: str = "/") -> str:
    """The agent's socket for this configuration (`<stateDir>/agent.sock` under the host root).

    Found by scanning for the stateDir string, not by decoding the JSON: json would cost more
    than the rest of the fast path. A wrong guess is harmless: any agent parses the whole
    configuration itself and works in the state directory it names, and no agent at all
    means the plugin does the work.
    """
    state_dir = _string_value(stdin, b'"stateDir"')
    if state_dir is not None and not state_dir.startswith("/"):
        state_dir = None
    path = os.path.join(state_dir, "agent.sock") if state_dir else DEFAULT_SOCKET
    return os.path.join(host_root, path.lstrip("/"))


def _string_value(stdin: bytes, key: bytes) -> str | None:
    """The first string value of `key` in the JSON `stdin`, found without decoding it.

    None when absent, or when it holds an escape (decoding it right needs json).
    """
    at = stdin.find(key)
    if at < 0:
        return None
    rest = stdin[at + len(key) :].lstrip()
    if not rest.startswith(b":"):
        return None
    rest = rest[1:].lstrip()
    end = rest.find(b'"', 1)
    if not rest.startswith(b'"') or end < 0:
        return None
    value = rest[1:end]
    if b"\\" in value:
        return None
    return value.decode("utf-8", "replace")


def answer_version(stdin: bytes) -> str:
    """The version to answer an error in: the configuration's whenever it can be read.

    Only on error paths, so json's import cost does not matter here. Negotiated as
    cni.request.negotiate_version does (its cniVersions list, CNI 1.1), else `cniVersion`; for
    a configuration that is not JSON, the first `cniVersion` string found in it.
    """
    import json

    try:
        config = json.loads(stdin)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        return _string_value(stdin, b'"cniVersion"') or DEFAULT_VERSION
    given = config.get("cniVersion")
    version = given if isinstance(given, str) and given else None
    listed = config.get("cniVersions")
    if isinstance(listed, list):
        supported = [v for v in SUPPORTED_VERSIONS if v in listed or v == version]
        version = supported[-1] if supported else version
    return version or DEFAULT_VERSION


def error_output(stdin: bytes, code: int, msg: str, details: str) -> bytes:
    """The spec's error JSON for a failure the plugin reports without decoding the request."""
    version = answer_version(stdin)
    fields = (("cniVersion", version), ("msg", msg), ("details", details))
    body = ", ".join(f'"{name}": {_json_string(value)}' for name, value in fields)
    return f'{{"code": {int(code)}, {body}}}'.encode()


def _json_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c >= " " else f"\\u{ord(c):04x}" for c in escaped) + '"'


def encode_request(env: dict[str, str], stdin: bytes) -> bytes:
    blob = "\0".join(f"{name}={value}" for name, value in env.items()).encode()
    return _netstring(blob) + _netstring(stdin)


def decode_request(message: bytes) -> tuple[dict[str, str], bytes]:
    """The environment and stdin of a request; ValueError if it is malformed."""
    blob, rest = _read_netstring(message)
    stdin, rest = _read_netstring(rest)
    if rest:
        raise ValueError("trailing bytes after the request")
    env = {}
    for item in filter(None, blob.decode().split("\0")):
        name, _, value = item.partition("=")
        env[name] = value
    return env, stdin


def encode_answer(status: int, output: bytes) -> bytes:
    return b"%d\n" % status + output


def forward(
    socket_path: str, env: dict[str, str], stdin: bytes, timeout: float = ANSWER_TIMEOUT
) -> tuple[int, bytes]:
    """The agent's exit status and output for this invocation.

    AgentUnavailableError when the plugin should do the work itself, AgentTimeoutError when
    nobody may (see the module's docstring).
    """
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    except OSError as error:
        raise AgentUnavailableError(str(error)) from error
    try:
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(socket_path)
            sock.settimeout(timeout)
            # The agent starts only once it has read the whole request, up to our shutdown:
            # a failure before that point leaves it nothing to do.
            sock.sendall(encode_request(env, stdin))
            sock.shutdown(_socket.SHUT_WR)
        except OSError as error:  # absent, refused, backlog full, path too long, reset
            raise AgentUnavailableError(str(error)) from error
        try:
            answer = read_all(sock)
        except TimeoutError as error:
            raise AgentTimeoutError(
                f"no answer from the agent at {socket_path} within {timeout:g}s"
            ) from error
        except OSError as error:  # reset: the agent died with the request
            raise AgentUnavailableError(str(error)) from error
    finally:
        sock.close()
    if answer == DEFER:
        raise AgentUnavailableError("the agent cannot see this network namespace")
    status, newline, output = answer.partition(b"\n")
    if not newline or not status.isdigit():
        raise AgentUnavailableError("the agent closed the connection without answering")
    return int(status), output


def ask_agent(
    environ: Mapping[str, str], stdin: bytes, settings: Settings
) -> tuple[int, bytes] | None:
    """The exit status and output for this invocation from the agent; None: do it yourself."""
    if environ.get("CNI_COMMAND") not in FORWARDED:
        return None
    try:
        return forward(
            socket_path_for(stdin, settings.host_root),
            environment_of(environ),
            stdin,
            settings.answer_timeout,
        )
    except AgentUnavailableError:
        return None
    except AgentTimeoutError as error:
        # The agent may still be doing this very request: doing it here too would race it.
        return 1, error_output(
            stdin,
            TRY_AGAIN_LATER,
            "the smarter-cni agent did not answer in time",
            f"{error}; it may still be working on it, so the plugin did not do it too",
        )


def settings_error(stdin: bytes, error: SettingsError) -> tuple[int, bytes]:
    """The exit status and error JSON for settings the plugin cannot run with."""
    return 1, error_output(stdin, SETTINGS_ERROR, error.msg, error.details)


def main() -> None:
    """The zipapp's entry: the agent's answer if it gives one, else the whole program."""
    if sys.argv[:1] == ["-c"]:
        del sys.argv[0]  # started by the shebang's bootstrap: argv[0] is now the archive
    archive, arguments = sys.argv[0], sys.argv[1:]
    if not arguments:
        stdin = _read_fd(0)
        try:
            settings = load_settings(os.environ, archive)
        except SettingsError as error:
            status, output = settings_error(stdin, error)
        else:
            answered = ask_agent(os.environ, stdin, settings)
            if answered is None:
                _import_from(archive)
                from cni.plugin import execute, nodes_under

                answered = execute(os.environ, stdin, nodes_under(settings.host_root))
            status, output = answered
        _write_fd(1, output)
        sys.exit(status)
    _import_from(archive)
    from cni.__main__ import main as operator_main

    sys.exit(operator_main(arguments))


def _import_from(archive: str) -> None:
    if not archive.startswith("/"):
        archive = f"{os.getcwd()}/{archive}"
    if archive not in sys.path:
        sys.path.insert(0, archive)


def _read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_all(sock: _socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        chunks.append(chunk)
        if size > MAX_MESSAGE:
            raise MessageTooLargeError(b"".join(chunks))


def _netstring(data: bytes) -> bytes:
    return b"%d:" % len(data) + data + b","


def _read_netstring(data: bytes) -> tuple[bytes, bytes]:
    length, colon, rest = data.partition(b":")
    if not colon or not length.isdigit() or rest[int(length) : int(length) + 1] != b",":
        raise ValueError("malformed netstring")
    size = int(length)
    return rest[:size], rest[size + 1 :]


if __name__ == "__main__":
    main()
