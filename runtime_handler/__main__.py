"""Entry point of `smarter-hybrid-runtime`: route runc's command line to runc or to firmware.

Called by containerd's runc shim in runc's place. A call about a firmware container is handled
here; every other call is replaced by runc with the same arguments. Deciding costs one stat
(or, at `create`, one read of config.json and of the entrypoint's first bytes); who answers a
call about a container is runtime_handler.route's decision, the launcher's too.
"""

from __future__ import annotations

import sys

from runtime_handler import passthrough, route, runc_cli, settings

# No `typing` at run time: the create of every container pays for imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from runtime_handler.bundle import Bundle

PROGRAM = "smarter-hybrid-runtime"
USAGE = f"""usage: {PROGRAM} [runc global options] COMMAND [options] [ID ...]

OCI runtime for the Kubernetes RuntimeClass "hybrid": containers whose entrypoint is
microcontroller firmware (an ARM Cortex-M/R ELF) run on a remote core through remoteproc;
every other container is handed to runc with the same arguments.

Takes runc's command line (global --root, --log, --log-format, --systemd-cgroup, --debug;
create, start, state, kill, delete, features, ps, pause, resume, update, exec, run...).

  install-containerd-config [--host-root DIR] [--bundle DIR] [--binary PATH] [--restart]
                         install the host-side bundle and the runtime (with --bundle), then
                         add the runtime "hybrid" to the node's containerd (or k3s) config
  install-engine-config [--host-root DIR] [--reload]
                         add the runtime "hybrid" to podman's containers.conf and Docker's
                         daemon.json, where those engines are present

settings (environment variables; else NAME=value lines in <this executable>.conf):
  SMARTER_RUNTIME_HOST_ROOT directory standing for the host's / (default /)
  SMARTER_RUNC           runc to hand other containers to (default /usr/sbin/runc)
  SMARTER_START_TIMEOUT  seconds a core may take to reach state running (default 10, max 600)
  SMARTER_CONSOLE_TIMEOUT seconds to wait for a started core's console tty (default 2, max 60)
  SMARTER_LOG_LEVEL      level of the supervisor's entries in the runtime log (default info)
  SMARTER_CHANNEL_TIMEOUT seconds a sidecar's create waits for its pod's firmware to announce a
                         data channel (default 10, 0 to 600)
SMARTER_HOST_ROOT, which containerd passes to every program it runs, is not read.
In a firmware container's own environment (config.json), set by the device manager:
  SMARTER_RPROC          the core granted to the container, remoteprocN (default: a free one)
Every SMARTER_* variable of every program: docs/contributing.md.
"""


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["install-containerd-config"]:  # the installer's, never the shim's
        from runtime_handler.containerd_config import main as install

        return install(words[1:])
    if words[:1] == ["install-engine-config"]:  # podman's and Docker's, never the shim's
        from runtime_handler.engine_config import main as install_engines

        return install_engines(words[1:])
    invocation = runc_cli.parse(words)
    command = invocation.command
    if command is None:
        if _asks(words, ("--version", "-v")):
            from smarter_common import __version__

            print(f"{PROGRAM} {__version__}")
            return 0
        if _asks(words, ("--help", "-h")) or not words:
            print(USAGE, end="")
            return 0
    try:
        # The file is read at once, so a malformed one is refused for every call, runc's too.
        settings.current()
    except settings.SettingsError as error:
        from runtime_handler.errors import report

        return report(error, log=invocation.log, log_format=invocation.log_format)
    if command in ("create", "run"):
        return _create(invocation, words)
    if command == "list":
        return passthrough.list_containers([PROGRAM, *words])
    owner = route.owner(command, invocation.root, invocation.container_id)
    if owner == route.REFUSED:
        return _refuse_id(invocation)
    if owner == route.RUNTIME:
        return _firmware_command(invocation)
    passthrough.exec_runc([PROGRAM, *words])
    return 127


def _create(invocation: runc_cli.Invocation, words: list[str]) -> int:
    if invocation.container_id and route.id_problem(invocation.container_id):
        return _refuse_id(invocation)
    from runtime_handler import bundle, elf_check
    from runtime_handler.errors import FirmwareRefusedError, RuntimeCallError, report

    loaded = None
    try:
        loaded = bundle.load(invocation.option("bundle") or ".")
        facts = elf_check.classify(loaded)
    except FirmwareRefusedError as error:
        return report(error, log=invocation.log, log_format=invocation.log_format)
    except RuntimeCallError:
        # An unreadable bundle is runc's to report, in its own words.
        facts = None
    if facts is None or loaded is None:
        if loaded is not None and route.pod_holds_firmware(invocation.root, loaded.pod_sandbox_id):
            refused = _give_data_channels(invocation, loaded)
            if refused:
                return refused
        passthrough.exec_runc([PROGRAM, *words])
        return 127
    from runtime_handler import firmware_commands
    from runtime_handler.errors import as_call_error
    from smarter_common.errors import SmarterError

    try:
        if invocation.command == "run":
            raise RuntimeCallError(
                "run is not supported for firmware containers: use create, then start"
            )
        return firmware_commands.create(invocation, loaded, facts)
    except (SmarterError, OSError) as error:
        return report(as_call_error(error), log=invocation.log, log_format=invocation.log_format)


def _give_data_channels(invocation: runc_cli.Invocation, loaded: Bundle) -> int:
    """Add the pod's firmware data channels to a sidecar's config; 0, or the refusal's code."""
    from runtime_handler import data_channels
    from runtime_handler.errors import as_call_error, report
    from smarter_common.errors import SmarterError

    try:
        data_channels.give_to_sidecar(invocation.root, loaded)
    except (SmarterError, OSError, ValueError) as error:
        return report(as_call_error(error), log=invocation.log, log_format=invocation.log_format)
    return 0


def _refuse_id(invocation: runc_cli.Invocation) -> int:
    """runc's refusal of a malformed id, before any path is built from it (`../x`)."""
    from runtime_handler.errors import RuntimeCallError, report

    problem = route.id_problem(invocation.container_id) or ""
    return report(RuntimeCallError(problem), log=invocation.log, log_format=invocation.log_format)


def _firmware_command(invocation: runc_cli.Invocation) -> int:
    from runtime_handler.errors import as_call_error, report
    from smarter_common.errors import SmarterError

    handler: Callable[[runc_cli.Invocation], int]
    if invocation.command == "kill":
        # kill -> stopped is a goal (issue 16): kill needs none of the other commands' imports.
        from runtime_handler.firmware_kill import kill as handler
    else:
        from runtime_handler import firmware_commands

        handler = firmware_commands.COMMANDS[invocation.command or ""]
    try:
        return handler(invocation)
    except (SmarterError, OSError) as error:
        return report(as_call_error(error), log=invocation.log, log_format=invocation.log_format)


def _asks(words: list[str], flags: tuple[str, ...]) -> bool:
    return any(word in flags for word in words)


if __name__ == "__main__":
    sys.exit(main())
