"""Reading the runtime's environment: each refusal names the variable (code 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cni.errors import CniError
from cni.request import parse, parse_cni_args

CONFIG = json.dumps({"cniVersion": "1.0.0", "name": "smarter", "type": "smarter-cni"}).encode()


def _env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    netns = tmp_path / "netns"
    netns.touch()
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": str(netns),
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=iot;K8S_POD_NAME=sensor-7xk2p",
        "CNI_PATH": "/opt/cni/bin",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v != "<unset>"}


def test_add_request_carries_pod_identity(tmp_path: Path) -> None:
    request = parse(_env(tmp_path), CONFIG)
    assert (request.command, request.container_id, request.ifname) == ("ADD", "abc123", "eth0")
    assert (request.pod_name, request.pod_namespace) == ("sensor-7xk2p", "iot")
    assert request.cni_version == "1.0.0"


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"CNI_COMMAND": "ATTACH"}, "CNI_COMMAND"),
        ({"CNI_COMMAND": "<unset>"}, "CNI_COMMAND"),
        ({"CNI_CONTAINERID": "<unset>"}, "CNI_CONTAINERID"),
        ({"CNI_CONTAINERID": "../escape"}, "CNI_CONTAINERID"),
        ({"CNI_IFNAME": "a-name-too-long-for-linux"}, "CNI_IFNAME"),
        ({"CNI_IFNAME": "eth/0"}, "CNI_IFNAME"),
        ({"CNI_NETNS": "<unset>"}, "CNI_NETNS"),
        ({"CNI_NETNS": "/run/netns/missing-for-sure"}, "CNI_NETNS"),
        ({"CNI_ARGS": "K8S_POD_NAME=evil\nname"}, "K8S_POD_NAME"),
        ({"CNI_ARGS": "K8S_POD_NAME=../../etc/passwd"}, "K8S_POD_NAME"),
        ({"CNI_ARGS": "K8S_POD_NAMESPACE=a/b"}, "K8S_POD_NAMESPACE"),
        ({"CNI_ARGS": "K8S_POD_NAMESPACE=tab\there"}, "K8S_POD_NAMESPACE"),
        ({"CNI_ARGS": "K8S_POD_NAME=a..b"}, "K8S_POD_NAME"),
        ({"CNI_ARGS": "K8S_POD_NAME=esc\x1b[31m"}, "K8S_POD_NAME"),
        ({"CNI_ARGS": "K8S_POD_NAME=" + "x" * 254}, "K8S_POD_NAME"),
        ({"CNI_ARGS": "novalue"}, "CNI_ARGS"),
    ],
)
def test_invalid_environment_is_code_4_naming_the_variable(
    tmp_path: Path, overrides: dict[str, str], variable: str
) -> None:
    with pytest.raises(CniError) as caught:
        parse(_env(tmp_path, **overrides), CONFIG)
    assert caught.value.code == 4
    assert variable in caught.value.msg + caught.value.details


def test_del_needs_no_netns(tmp_path: Path) -> None:
    request = parse(_env(tmp_path, CNI_COMMAND="DEL", CNI_NETNS="<unset>"), CONFIG)
    assert request.netns == ""


@pytest.mark.parametrize("stdin", [b"", b"not json", b"[1, 2]"])
def test_missing_or_undecodable_config_is_code_6(tmp_path: Path, stdin: bytes) -> None:
    with pytest.raises(CniError) as caught:
        parse(_env(tmp_path), stdin)
    assert caught.value.code == 6


def test_version_needs_nothing_but_the_command() -> None:
    assert parse({"CNI_COMMAND": "VERSION"}, b"").command == "VERSION"


def test_cni_args_may_hold_any_keys() -> None:
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_UID=1-2;;FOO=") == {
        "IgnoreUnknown": "1",
        "K8S_POD_UID": "1-2",
        "FOO": "",
    }


@pytest.mark.parametrize(
    "name", ["focused_cray", "Web_1", "my.pod", "x" * 253, "Ünïcode", "with space"]
)
def test_names_from_other_clients_are_not_refused(name: str) -> None:
    # podman passes its container names: generated `focused_cray`, or any a user chose.
    args = parse_cni_args(f"IgnoreUnknown=1;K8S_POD_NAME={name}")
    assert args["K8S_POD_NAME"] == name


@pytest.mark.parametrize(
    ("config", "env", "version"),
    [
        ({"cniVersion": "0.4.0"}, {"CNI_CONTAINERID": "../escape"}, "0.4.0"),
        ({"cniVersion": "1.0.0"}, {"CNI_COMMAND": "ATTACH"}, "1.0.0"),
        ({"cniVersion": "1.0.0"}, {"CNI_ARGS": "K8S_POD_NAME=a\nb"}, "1.0.0"),
        ({"cniVersions": ["0.4.0", "1.0.0"]}, {"CNI_IFNAME": "eth/0"}, "1.0.0"),
        ({"name": "no-version"}, {"CNI_IFNAME": "eth/0"}, "1.1.0"),
    ],
)
def test_errors_found_before_the_config_is_parsed_answer_in_its_version(
    tmp_path: Path, config: dict[str, object], env: dict[str, str], version: str
) -> None:
    from cni import plugin

    stdin = json.dumps({"name": "smarter", "type": "smarter-cni", **config}).encode()
    status, output = plugin.execute(_env(tmp_path, **env), stdin, plugin.nodes_under())
    error = json.loads(output)
    assert (status, error["code"], error["cniVersion"]) == (1, 4, version)


def test_undecodable_config_is_answered_in_the_version_it_names(tmp_path: Path) -> None:
    from cni import plugin

    status, output = plugin.execute(
        _env(tmp_path), b'{"cniVersion": "0.4.0", "name": ', plugin.nodes_under()
    )
    assert (status, json.loads(output)["code"], json.loads(output)["cniVersion"]) == (
        1, 6, "0.4.0",
    )  # fmt: skip
