"""The CNI plugin: `CNI_COMMAND` mapped to add/delete/check/status/gc/version.

The exec'd path imports almost nothing: it hands the raw invocation to the agent (cni.client)
and prints the agent's answer. Only when the agent is away does it parse, validate and do the
work itself, the same way the agent does (`execute`); when the agent has the request but is
slow to answer, it reports code 11 rather than racing it.
"""

from __future__ import annotations

import os
import sys

from cni import client

# Not `from typing import TYPE_CHECKING`: importing typing costs every exec ~2.5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import IO, Any

    from cni.config import NetConf
    from cni.node import NodeNetwork
    from cni.request import Request

    NodeFor = Callable[[NetConf], NodeNetwork]

INTERNAL_ERROR = 110  # cni.errors.INTERNAL_FAILURE, without importing it on the fast path


def version_result(req: Request) -> dict[str, Any]:
    from cni.request import SUPPORTED_VERSIONS, negotiate_version

    wanted = negotiate_version(req.config)
    return {
        "cniVersion": wanted if wanted in SUPPORTED_VERSIONS else client.DEFAULT_VERSION,
        "supportedVersions": list(SUPPORTED_VERSIONS),
    }


def add(node: NodeNetwork, req: Request) -> dict[str, Any]:
    return node.add(req)


def delete(node: NodeNetwork, req: Request) -> None:
    node.delete(req)


def check(node: NodeNetwork, req: Request) -> None:
    from cni.errors import INVALID_CONFIG, CniError

    if node.conf.prev_result is None:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult", "the runtime passed none")
    node.check(req)


def status(node: NodeNetwork, req: Request) -> None:
    node.status()


def gc(node: NodeNetwork, req: Request) -> None:
    from cni.errors import INVALID_CONFIG, CniError

    valid = node.conf.valid_attachments
    if valid is None:
        raise CniError(
            INVALID_CONFIG, "GC needs cni.dev/valid-attachments", "the runtime passed no list"
        )
    node.gc(valid)


COMMANDS: dict[str, Callable[[NodeNetwork, Request], dict[str, Any] | None]] = {
    "ADD": add,
    "DEL": delete,
    "CHECK": check,
    "STATUS": status,
    "GC": gc,
}


def handle(req: Request, node_for: NodeFor) -> dict[str, Any] | None:
    """Do what `req` asks, on the node network its configuration describes."""
    if req.command == "VERSION":
        return version_result(req)
    from cni import config

    conf = config.parse(req.config)
    return COMMANDS[req.command](node_for(conf), req)


def execute(env: Mapping[str, str], stdin: bytes, node_for: NodeFor) -> tuple[int, bytes]:
    """One invocation, start to end: the exit status and what to print on stdout."""
    import json

    from cni import request
    from cni.errors import CniError

    version: str | None = None
    try:
        req = request.parse(env, stdin)
        version = req.cni_version
        result = handle(req, node_for)
    except CniError as error:
        failure = error
    except Exception as error:
        failure = CniError(INTERNAL_ERROR, "smarter-cni failed", f"{type(error).__name__}: {error}")
    else:
        return 0, b"" if result is None else json.dumps(result).encode()
    # Refused before the request was whole: still answer in the configuration's version.
    answer = failure.to_dict(version or client.answer_version(stdin))
    return 1, json.dumps(answer).encode()


def nodes_under(host_root: str = "/") -> NodeFor:
    """Nodes for the in-process path, with host paths under the plugin's own host root."""

    def node_for(conf: NetConf) -> NodeNetwork:
        from pathlib import Path

        from cni.node import NodeNetwork
        from smarter_common.hostroot import HostRoot

        return NodeNetwork(conf, HostRoot(Path(host_root)))

    return node_for


def run(
    environ: Mapping[str, str] | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    executable: str | None = None,
) -> int:
    """One plugin invocation as a runtime makes it; the exit status.

    `executable` is the plugin as exec'd (default sys.argv[0]): its settings file is beside it.
    """
    env = os.environ if environ is None else environ
    out = sys.stdout.buffer if stdout is None else stdout
    data = (sys.stdin.buffer if stdin is None else stdin).read()
    try:
        settings = client.load_settings(env, sys.argv[0] if executable is None else executable)
    except client.SettingsError as error:
        status, output = client.settings_error(data, error)
    else:
        answered = client.ask_agent(env, data, settings)
        if answered is None:
            answered = execute(env, data, nodes_under(settings.host_root))
        status, output = answered
    out.write(output)
    out.flush()
    return status
