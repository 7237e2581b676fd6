"""The plugin's thin side: finding the agent, and the bytes it exchanges with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cni.client import (
    AgentUnavailableError,
    decode_request,
    encode_request,
    forward,
    socket_path_for,
)


@pytest.mark.parametrize(
    ("stdin", "environ", "expected"),
    [
        (b'{"type": "smarter-cni"}', {}, "/var/lib/smarter-cni/agent.sock"),
        (b'{"stateDir": "/tmp/scni-1", "mtu": 1}', {}, "/tmp/scni-1/agent.sock"),
        (b'{"stateDir" :\n "/s"}', {"SMARTER_HOST_ROOT": "/host"}, "/host/s/agent.sock"),
        (b'{"stateDir": "relative"}', {}, "/var/lib/smarter-cni/agent.sock"),
        (b'{"stateDir": "/a\\"b"}', {}, "/var/lib/smarter-cni/agent.sock"),
    ],
)
def test_socket_is_found_in_the_state_dir_without_decoding_json(
    stdin: bytes, environ: dict[str, str], expected: str
) -> None:
    assert socket_path_for(stdin, environ) == expected


def test_request_round_trips_any_environment_value_and_stdin() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAME=evil\nname;X=a=b,c:d"}
    stdin = b'{"a": "1:2,"}\n'
    assert decode_request(encode_request(env, stdin)) == (env, stdin)


@pytest.mark.parametrize("message", [b"", b"5:abc,", b"3:abc,2:xy", b"x:abc,0:,"])
def test_malformed_request_is_refused(message: bytes) -> None:
    with pytest.raises(ValueError):
        decode_request(message)


def test_absent_agent_means_doing_the_work_here(tmp_path: Path) -> None:
    with pytest.raises(AgentUnavailableError):
        forward(f"{tmp_path}/agent.sock", {"CNI_COMMAND": "ADD"}, b"{}")


def test_fast_path_imports_neither_json_nor_socket() -> None:
    probe = (
        "import sys; import cni.plugin; "
        "print(','.join(m for m in ('json', 'socket', 'typing', 'dataclasses', 'pathlib',"
        " 'ipaddress', 'pyroute2', 'structlog') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert result.stdout.strip() == ""


def test_agent_defers_to_the_plugin_for_a_netns_it_cannot_see(tmp_path: Path) -> None:
    from cni.agent import _Nodes, answer
    from smarter_common.hostroot import HostRoot

    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_IFNAME": "eth0",
        "CNI_NETNS": "/proc/999999999/ns/net",
    }
    reply = answer(encode_request(env, b'{"cniVersion": "1.0.0"}'), _Nodes(HostRoot(tmp_path)))
    assert reply == b"defer\n"
