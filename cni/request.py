"""A CNI invocation as data: the `CNI_*` environment and the configuration on stdin.

Only the standard library: this runs in every exec of the plugin.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

from cni.client import DEFAULT_VERSION
from cni.client import SUPPORTED_VERSIONS as SUPPORTED_VERSIONS
from cni.errors import DECODE_FAILURE, INVALID_ENVIRONMENT, CniError
from cni.names import name_danger

# Not `from typing import TYPE_CHECKING`: importing typing costs every exec ~2.5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
_ATTACHMENT_COMMANDS = ("ADD", "DEL", "CHECK")
_NEEDS_NETNS = ("ADD", "CHECK")
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_CNI_ARGS_KEY = re.compile(r"[A-Za-z0-9_]+")


class Request:
    """What the runtime asked for, validated as far as the environment goes.

    A plain class, not a dataclass: importing dataclasses costs the exec'd plugin ~10 ms.
    """

    __slots__ = ("args", "command", "config", "container_id", "ifname", "netns", "path")

    def __init__(
        self,
        command: str,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        args: dict[str, str] | None = None,
        path: str = "",
        config: dict[str, Any] | None = None,
    ) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args or {}
        self.path = path
        self.config = config or {}

    def __repr__(self) -> str:
        return f"Request({self.command} {self.container_id} {self.ifname} {self.netns})"

    @property
    def pod_name(self) -> str | None:
        return self.args.get("K8S_POD_NAME") or None

    @property
    def pod_namespace(self) -> str | None:
        return self.args.get("K8S_POD_NAMESPACE") or None

    @property
    def cni_version(self) -> str:
        return negotiate_version(self.config) or DEFAULT_VERSION


def negotiate_version(config: Mapping[str, Any]) -> str | None:
    """The spec version to speak: the highest of `cniVersions` and `cniVersion` we support.

    CNI 1.1 lets a configuration list several versions (`cniVersions`); the runtime picks the
    highest it supports, counting `cniVersion` too (libcni's rule). With no supported one, or
    no list, it is `cniVersion` as given (which config.parse then refuses if unsupported).
    """
    version = config.get("cniVersion")
    given = version if isinstance(version, str) and version else None
    versions = config.get("cniVersions")
    if not isinstance(versions, list):
        return given
    candidates = [v for v in SUPPORTED_VERSIONS if v in versions or v == given]
    return candidates[-1] if candidates else given


def parse(environ: Mapping[str, str], stdin: bytes) -> Request:
    """The request in `environ` and `stdin`; CniError (code 4 or 6) names what is wrong."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(
            INVALID_ENVIRONMENT,
            "invalid CNI_COMMAND",
            f"CNI_COMMAND={command!r} is not one of {', '.join(COMMANDS)}",
            hint="smarter-cni runs as a CNI plugin; see `smarter-cni --help` for its commands",
        )
    config = _decode_config(stdin, required=command != "VERSION")
    if command not in _ATTACHMENT_COMMANDS:
        return Request(command=command, path=environ.get("CNI_PATH", ""), config=config)
    container_id = environ.get("CNI_CONTAINERID", "")
    if not _CONTAINER_ID.fullmatch(container_id):
        raise CniError(
            INVALID_ENVIRONMENT,
            "invalid CNI_CONTAINERID",
            f"CNI_CONTAINERID={container_id!r}: must start with a letter or digit, then letters,"
            " digits, '_', '.' or '-'",
        )
    ifname = environ.get("CNI_IFNAME", "")
    _check_ifname(ifname)
    netns = environ.get("CNI_NETNS", "")
    if command in _NEEDS_NETNS:
        if not netns:
            raise CniError(INVALID_ENVIRONMENT, "missing CNI_NETNS", f"{command} needs CNI_NETNS")
        if not os.path.exists(netns):
            raise CniError(
                INVALID_ENVIRONMENT, "invalid CNI_NETNS", f"CNI_NETNS={netns!r} does not exist"
            )
    return Request(
        command=command,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        args=parse_cni_args(environ.get("CNI_ARGS", "")),
        path=environ.get("CNI_PATH", ""),
        config=config,
    )


def parse_cni_args(text: str) -> dict[str, str]:
    """`K=V;K=V` into a dict; a pod name or namespace that is dangerous to handle is refused."""
    args: dict[str, str] = {}
    for pair in filter(None, text.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not _CNI_ARGS_KEY.fullmatch(key):
            raise CniError(INVALID_ENVIRONMENT, "invalid CNI_ARGS", f"{pair!r} is not KEY=VALUE")
        args[key] = value
    # Any name a client may legally send gets its network (podman passes its container names,
    # `focused_cray`, `Web_1`); only what could escape a file, a path or a log line is refused.
    for key in ("K8S_POD_NAME", "K8S_POD_NAMESPACE"):
        danger = name_danger(args.get(key, ""))
        if danger:
            raise CniError(
                INVALID_ENVIRONMENT,
                "invalid CNI_ARGS",
                f"{key}={args[key]!r} {danger}",
                hint="a pod or container name of letters, digits, '-', '_' and '.' is safe",
            )
    return args


def _check_ifname(ifname: str) -> None:
    # The kernel's rules (dev_valid_name): 1..15 bytes, not . or .., no '/', ':' or whitespace.
    valid = (
        0 < len(ifname.encode()) <= 15
        and ifname not in (".", "..")
        and not any(c in "/:" or c.isspace() for c in ifname)
    )
    if not valid:
        raise CniError(
            INVALID_ENVIRONMENT,
            "invalid CNI_IFNAME",
            f"CNI_IFNAME={ifname!r} is not a valid interface name (1-15 bytes, no '/', ':', space)",
        )


def _decode_config(stdin: bytes, *, required: bool) -> dict[str, Any]:
    if not stdin.strip():
        if required:
            raise CniError(DECODE_FAILURE, "no network configuration on stdin")
        return {}
    try:
        config = json.loads(stdin)
    except ValueError as error:
        raise CniError(DECODE_FAILURE, "network configuration is not JSON", str(error)) from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "network configuration is not a JSON object")
    return config
