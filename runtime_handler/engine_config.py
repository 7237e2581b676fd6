"""`smarter-hybrid-runtime install-engine-config`: the runtime `hybrid` for podman and Docker.

Outside Kubernetes a firmware developer runs containers with podman or Docker; both name their
OCI runtimes in a configuration file, and `--runtime hybrid` picks ours:
- podman: `/etc/containers/containers.conf`, key `hybrid` in `[engine.runtimes]` (a list of
  paths; podman reads the file at every command, so nothing needs restarting);
- Docker: `/etc/docker/daemon.json`, `"runtimes": {"hybrid": {"path": ...}}` (dockerd reloads
  its runtimes on SIGHUP, `systemctl reload docker`).
Only the engines present on the node are configured. The rule is the containerd installer's:
every runtime already there keeps working (the runtime is added beside them, nothing else in the
file changes), and a file that cannot be read, is not the engine's format, or already names
another program `hybrid` is refused unchanged, with what to add by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from runtime_handler.containerd_config import BINARY, HANDLER
from smarter_common.atomic import write_atomic
from smarter_common.errors import ConfigError
from smarter_common.hostroot import HostRoot

PODMAN_CONFIG = PurePosixPath("/etc/containers/containers.conf")
DOCKER_CONFIG = PurePosixPath("/etc/docker/daemon.json")
# Where Debian and the upstream packages install each engine; an engine whose configuration
# file already exists counts as present too (a node image may add the program later).
_PODMAN_PROGRAMS = ("/usr/bin/podman", "/usr/local/bin/podman")
_DOCKER_PROGRAMS = ("/usr/bin/dockerd", "/usr/sbin/dockerd", "/usr/local/bin/dockerd")
_DOCKER_UNIT = "docker.service"
# The `[engine.runtimes]` header line, as TOML allows it to be spelt (spaces, a comment).
_RUNTIMES_HEADER = re.compile(
    r'^[ \t]*\[[ \t]*"?engine"?[ \t]*\.[ \t]*"?runtimes"?[ \t]*\][ \t]*(#.*)?$'
)


class EngineConfigError(ConfigError):
    """A container engine's configuration cannot be given the runtime without losing something."""


@dataclass(frozen=True)
class Installed:
    """What the installer did to one engine's file (host path)."""

    engine: str
    path: PurePosixPath
    changed: bool


def podman_entry(binary: str = BINARY) -> str:
    """The lines an operator adds to containers.conf by hand."""
    return f"[engine.runtimes]\n{HANDLER} = [{json.dumps(binary)}]\n"


def docker_entry(binary: str = BINARY) -> str:
    """The member an operator adds to daemon.json by hand."""
    return json.dumps({"runtimes": {HANDLER: {"path": binary}}}, indent=2) + "\n"


def podman_with_runtime(text: str, *, binary: str = BINARY, source: str) -> str | None:
    """containers.conf `text` with `hybrid` in `[engine.runtimes]`; None when it has it already.

    The key goes right under an existing `[engine.runtimes]` header (Debian's file has one,
    with every entry commented out), else a new table is appended. The result is parsed and
    must equal the original plus that one key, or the file is refused.
    """
    document = _parse_toml(text, source=source)
    engine = document.get("engine", {})
    runtimes = engine.get("runtimes", {}) if isinstance(engine, dict) else None
    if not isinstance(runtimes, dict):
        raise EngineConfigError(
            f"{source}: engine.runtimes is not a table",
            hint=f"make it one holding:\n{podman_entry(binary)}",
        )
    present = runtimes.get(HANDLER)
    if present is not None:
        # podman runs the first path of the list that exists.
        if isinstance(present, list) and present[:1] == [binary]:
            return None
        raise EngineConfigError(
            f"{source} already defines the runtime {HANDLER!r} as {present!r}, not [{binary!r}]",
            hint="remove or rename that runtime, or point it at the hybrid runtime",
        )
    updated = _insert_podman_runtime(text, f"{HANDLER} = [{json.dumps(binary)}]")
    expected = json.loads(json.dumps(document))
    expected.setdefault("engine", {}).setdefault("runtimes", {})[HANDLER] = [binary]
    try:
        result = _parse_toml(updated, source=source)
    except EngineConfigError:
        result = None
    if result != expected:
        raise EngineConfigError(
            f"{source} defines its runtimes in a way the runtime cannot be added to",
            hint=f"add it yourself:\n{podman_entry(binary)}",
        )
    return updated


def _insert_podman_runtime(text: str, line: str) -> str:
    lines = text.splitlines(keepends=True)
    for index, current in enumerate(lines):
        if _RUNTIMES_HEADER.match(current.rstrip("\r\n")):
            newline = "" if current.endswith("\n") else "\n"
            return "".join([*lines[: index + 1], newline, line, "\n", *lines[index + 1 :]])
    if not text.strip():
        return f"[engine.runtimes]\n{line}\n"
    separator = "\n" if text.endswith("\n") else "\n\n"
    return f"{text}{separator}[engine.runtimes]\n{line}\n"


def _parse_toml(text: str, *, source: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise EngineConfigError(
            f"{source} is not TOML ({error}); left unchanged",
            hint="fix the file, or remove it to start from podman's defaults",
        ) from error


def docker_with_runtime(text: str, *, binary: str = BINARY, source: str) -> str | None:
    """daemon.json `text` with the runtime `hybrid` in `runtimes`; None when it has it already.

    Every other member is kept in its order; the file is rewritten with two-space indentation.
    """
    if not text.strip():
        return docker_entry(binary)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise EngineConfigError(
            f"{source} is not JSON ({error}); left unchanged",
            hint="fix the file (dockerd refuses to start with it as it is)",
        ) from error
    if not isinstance(document, dict):
        raise EngineConfigError(
            f"{source} is not a JSON object, as dockerd's daemon.json must be; left unchanged",
            hint=f"its content should be an object such as:\n{docker_entry(binary)}",
        )
    runtimes = document.setdefault("runtimes", {})
    if not isinstance(runtimes, dict):
        raise EngineConfigError(
            f"{source}: runtimes is not an object; left unchanged",
            hint=f"make it one holding:\n{docker_entry(binary)}",
        )
    present = runtimes.get(HANDLER)
    if present is not None:
        if isinstance(present, dict) and present.get("path") == binary:
            return None
        raise EngineConfigError(
            f"{source} already defines the runtime {HANDLER!r} as {json.dumps(present)},"
            f" not path {binary!r}",
            hint="remove or rename that runtime, or point it at the hybrid runtime",
        )
    runtimes[HANDLER] = {"path": binary}
    return json.dumps(document, indent=2) + "\n"


@dataclass(frozen=True)
class Engine:
    """One container engine: its name, configuration file and how to add the runtime to it."""

    name: str
    config: PurePosixPath
    programs: tuple[str, ...]
    add_runtime: Callable[..., str | None]

    def present(self, root: HostRoot) -> bool:
        return any(root.path(p).exists() for p in (*self.programs, str(self.config)))


ENGINES = (
    Engine("podman", PODMAN_CONFIG, _PODMAN_PROGRAMS, podman_with_runtime),
    Engine("docker", DOCKER_CONFIG, _DOCKER_PROGRAMS, docker_with_runtime),
)


def install(root: HostRoot, *, binary: str = BINARY) -> list[Installed]:
    """Give every engine present on the node the runtime; what was written for each.

    Every file is checked before any is written, so a refusal leaves all of them unchanged.
    """
    planned: list[tuple[Engine, Path, str | None]] = []
    for engine in ENGINES:
        if not engine.present(root):
            continue
        path = root.path(engine.config)
        source = str(engine.config)
        text = _read(path, source=source)
        planned.append((engine, path, engine.add_runtime(text, binary=binary, source=source)))
    installed = []
    for engine, path, updated in planned:
        if updated is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, updated)
        installed.append(Installed(engine.name, engine.config, changed=updated is not None))
    return installed


def _read(path: Path, *, source: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except UnicodeDecodeError as error:
        raise EngineConfigError(
            f"{source} is not UTF-8 text ({error}); left unchanged", hint="fix or remove the file"
        ) from error
    except OSError as error:
        raise EngineConfigError(
            f"cannot read {source}: {error.strerror or error}; left unchanged",
            hint="make it a readable file, or remove it",
        ) from error


def reload_command(unit: str = _DOCKER_UNIT) -> list[str]:
    """How an installer in a privileged host-PID pod has dockerd reload its runtimes (SIGHUP)."""
    host = ["nsenter", "--target=1", "--mount", "--uts", "--ipc", "--net", "--pid", "--"]
    return [*host, "systemctl", "try-reload-or-restart", unit]


def main(argv: list[str], *, run: Callable[[list[str]], int] | None = None) -> int:
    """The subcommand: install, log each engine's file, have dockerd reload if asked; exit
    codes as smarter_common.entry documents them (a refused file: one stderr line, exit 2)."""
    from smarter_common import entry
    from smarter_common.cli import add_common_arguments

    parser = argparse.ArgumentParser(
        prog="smarter-hybrid-runtime install-engine-config",
        description="Add the runtime 'hybrid' to podman's containers.conf and Docker's"
        " daemon.json, for each engine present on the node.",
    )
    add_common_arguments(parser)
    parser.add_argument("--binary", default=BINARY, help=f"the runtime's path (default {BINARY})")
    parser.add_argument(
        "--reload",
        action="store_true",
        help="have dockerd reload its runtimes when daemon.json changed (needs host PID 1)",
    )
    return entry.run(parser.prog, parser, lambda args: _install_command(args, run or _run), argv)


def _install_command(args: argparse.Namespace, run: Callable[[list[str]], int]) -> int:
    from smarter_common.cli import host_root_from
    from smarter_common.logs import get_logger

    log = get_logger("runtime_handler.install")
    written = install(host_root_from(args), binary=args.binary)
    if not written:
        log.info("engine_config_no_engine", looked_for=[engine.name for engine in ENGINES])
    for item in written:
        log.info("engine_config", engine=item.engine, path=str(item.path), changed=item.changed)
    if args.reload and any(item.changed and item.engine == "docker" for item in written):
        command = reload_command()
        log.info("docker_reload", command=command)
        return run(command)
    return 0


def _run(command: list[str]) -> int:
    return subprocess.run(command, check=False).returncode
