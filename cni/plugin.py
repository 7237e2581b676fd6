"""The CNI plugin: `CNI_COMMAND` mapped to add/delete/check/status/gc/version.

The exec'd path imports the standard library only. It hands the invocation to the agent and
falls back to doing the same work in-process (importing pyroute2) when the agent is away.
"""

from __future__ import annotations

import json
import os
import sys

from cni import client, request
from cni.errors import INVALID_CONFIG, CniError
from cni.request import SUPPORTED_VERSIONS, Request

# Not `from typing import TYPE_CHECKING`: importing typing costs every exec ~2.5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import IO, Any

    from cni.config import NetConf
    from cni.node import Node

    NodeFor = Callable[[NetConf], Node]

INTERNAL_ERROR = 110


def version_result(req: Request) -> dict[str, Any]:
    wanted = req.config.get("cniVersion")
    return {
        "cniVersion": wanted if wanted in SUPPORTED_VERSIONS else "1.1.0",
        "supportedVersions": list(SUPPORTED_VERSIONS),
    }


def add(node: Node, req: Request) -> dict[str, Any]:
    return node.add(req)


def delete(node: Node, req: Request) -> None:
    node.delete(req)


def check(node: Node, req: Request) -> None:
    if node.conf.prev_result is None:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult", "the runtime passed none")
    node.check(req)


def status(node: Node, req: Request) -> None:
    node.status()


def gc(node: Node, req: Request) -> None:
    valid = node.conf.valid_attachments
    if valid is None:
        raise CniError(
            INVALID_CONFIG, "GC needs cni.dev/valid-attachments", "the runtime passed no list"
        )
    node.gc(valid)


COMMANDS: dict[str, Callable[[Node, Request], dict[str, Any] | None]] = {
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


def local_node(conf: NetConf) -> Node:
    from cni.node import Node
    from smarter_common import logs

    logs.configure()  # to stderr: stdout carries the result
    return Node(conf)


def run(
    environ: Mapping[str, str] | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[str] | None = None,
) -> int:
    """One plugin invocation as a runtime makes it; the exit status."""
    env = os.environ if environ is None else environ
    out = sys.stdout if stdout is None else stdout
    version = "1.1.0"
    try:
        data = (sys.stdin.buffer if stdin is None else stdin).read()
        req = request.parse(env, data)
        version = req.cni_version
        result: dict[str, Any] | None
        if req.command == "VERSION":
            result = version_result(req)
        else:
            try:
                result = client.forward(
                    client.socket_path_for(req.config), request.environment_of(env), data
                )
            except client.AgentUnavailableError:
                result = handle(req, local_node)
    except CniError as error:
        out.write(json.dumps(error.to_dict(version)))
        out.flush()
        return 1
    except Exception as error:
        failure = CniError(INTERNAL_ERROR, "smarter-cni failed", f"{type(error).__name__}: {error}")
        out.write(json.dumps(failure.to_dict(version)))
        out.flush()
        return 1
    if result is not None:
        out.write(json.dumps(result))
        out.flush()
    return 0
