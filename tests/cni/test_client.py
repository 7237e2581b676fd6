"""The plugin's thin side: finding the agent, and the bytes it exchanges with it."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cni.client import (
    ANSWER_TIMEOUT,
    ANSWER_TIMEOUT_ENV,
    CONNECT_TIMEOUT,
    HOST_ROOT_ENV,
    AgentTimeoutError,
    AgentUnavailableError,
    SettingsError,
    decode_request,
    encode_request,
    error_output,
    forward,
    load_settings,
    read_all,
    socket_path_for,
)


@pytest.mark.parametrize(
    ("stdin", "host_root", "expected"),
    [
        (b'{"type": "smarter-cni"}', "/", "/var/lib/smarter-cni/agent.sock"),
        (b'{"stateDir": "/tmp/scni-1", "mtu": 1}', "/", "/tmp/scni-1/agent.sock"),
        (b'{"stateDir" :\n "/s"}', "/host", "/host/s/agent.sock"),
        (b'{"stateDir": "relative"}', "/", "/var/lib/smarter-cni/agent.sock"),
        (b'{"stateDir": "/a\\"b"}', "/", "/var/lib/smarter-cni/agent.sock"),
    ],
)
def test_socket_is_found_in_the_state_dir_without_decoding_json(
    stdin: bytes, host_root: str, expected: str
) -> None:
    assert socket_path_for(stdin, host_root) == expected


def test_settings_default_when_there_is_neither_variable_nor_file(tmp_path: Path) -> None:
    settings = load_settings({}, str(tmp_path / "smarter-cni"))
    assert (settings.host_root, settings.answer_timeout) == ("/", ANSWER_TIMEOUT)


def test_the_shared_host_root_variable_never_moves_the_plugin(tmp_path: Path) -> None:
    # containerd hands the plugin its own environment, set for the hybrid runtime.
    settings = load_settings({"SMARTER_HOST_ROOT": "/sim"}, str(tmp_path / "smarter-cni"))
    assert settings.host_root == "/"


def test_settings_file_beside_the_plugin_is_read_and_the_environment_wins(
    tmp_path: Path,
) -> None:
    (tmp_path / "smarter-cni.conf").write_text(
        "# written by the installer\n\n"
        f"  {HOST_ROOT_ENV} = /from-file  \n"
        f"{ANSWER_TIMEOUT_ENV}=2.5\n"
    )
    plugin = str(tmp_path / "smarter-cni")
    from_file = load_settings({}, plugin)
    assert (from_file.host_root, from_file.answer_timeout) == ("/from-file", 2.5)
    overridden = load_settings({HOST_ROOT_ENV: "/from-env"}, plugin)
    assert (overridden.host_root, overridden.answer_timeout) == ("/from-env", 2.5)


def test_settings_file_is_found_beside_the_symlink_the_plugin_was_execd_as(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "smarter-cni").write_text("")
    (real / "smarter-cni.conf").write_text(f"{HOST_ROOT_ENV}=/beside-the-target\n")
    (tmp_path / "smarter-cni").symlink_to(real / "smarter-cni")
    (tmp_path / "smarter-cni.conf").write_text(f"{HOST_ROOT_ENV}=/beside-the-link\n")
    assert load_settings({}, str(tmp_path / "smarter-cni")).host_root == "/beside-the-link"


@pytest.mark.parametrize(
    ("text", "details"),
    [
        ("# ok\nSMARTER_HOST_ROOT=/sim\n", "unknown setting 'SMARTER_HOST_ROOT': smarter-cni"
         " reads SMARTER_CNI_HOST_ROOT, SMARTER_CNI_AGENT_TIMEOUT"),
        ("# ok\nexport SMARTER_CNI_HOST_ROOT\n",
         "'export SMARTER_CNI_HOST_ROOT' is not NAME=value"),
        ("# ok\n=/host\n", "'=/host' is not NAME=value"),
    ],
)  # fmt: skip
def test_unknown_or_malformed_settings_line_is_code_999_naming_file_and_line(
    tmp_path: Path, text: str, details: str
) -> None:
    from cni import plugin

    (tmp_path / "smarter-cni.conf").write_text(text)
    out = io.BytesIO()
    stdin = io.BytesIO(b'{"cniVersion": "0.4.0", "type": "smarter-cni"}')
    status = plugin.run({"CNI_COMMAND": "VERSION"}, stdin, out, str(tmp_path / "smarter-cni"))
    assert status == 1
    assert json.loads(out.getvalue()) == {
        "cniVersion": "0.4.0",
        "code": 999,
        "msg": f"invalid settings file {tmp_path}/smarter-cni.conf line 2",
        "details": details,
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (ANSWER_TIMEOUT_ENV, "soon"),
        (ANSWER_TIMEOUT_ENV, "0"),
        (ANSWER_TIMEOUT_ENV, "-1"),
        (ANSWER_TIMEOUT_ENV, "nan"),
        (ANSWER_TIMEOUT_ENV, "inf"),
        (ANSWER_TIMEOUT_ENV, "3601"),
        (HOST_ROOT_ENV, "relative/root"),
    ],
)
def test_unusable_setting_value_is_refused_naming_where_it_came_from(
    tmp_path: Path, name: str, value: str
) -> None:
    plugin = str(tmp_path / "smarter-cni")
    with pytest.raises(SettingsError, match=f"in the environment variable {name}: {name}="):
        load_settings({name: value}, plugin)
    (tmp_path / "smarter-cni.conf").write_text(f"\n{name}={value}\n")
    with pytest.raises(SettingsError, match=f"in {plugin}.conf line 2: {name}="):
        load_settings({}, plugin)


def test_empty_setting_means_the_default(tmp_path: Path) -> None:
    (tmp_path / "smarter-cni.conf").write_text(f"{ANSWER_TIMEOUT_ENV}=\n")
    settings = load_settings({HOST_ROOT_ENV: ""}, str(tmp_path / "smarter-cni"))
    assert (settings.host_root, settings.answer_timeout) == ("/", ANSWER_TIMEOUT)


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


@contextmanager
def _agent_that(path: Path, reply: Callable[[socket.socket], None]) -> Iterator[None]:
    """A stand-in agent on `path` that reads one whole request, then does `reply`."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    held: list[socket.socket] = []

    def serve() -> None:
        connection, _ = server.accept()
        held.append(connection)
        read_all(connection)
        reply(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        server.close()


def _say_nothing(connection: socket.socket) -> None:
    pass


def test_agent_that_has_the_request_but_is_slow_is_a_timeout_not_a_fallback(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.sock"
    with _agent_that(path, _say_nothing), pytest.raises(AgentTimeoutError, match=r"within 0\.3s"):
        forward(str(path), {"CNI_COMMAND": "ADD"}, b"{}", timeout=0.3)


def test_agent_that_closes_without_answering_means_doing_the_work_here(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    with _agent_that(path, lambda c: c.close()), pytest.raises(AgentUnavailableError):
        forward(str(path), {"CNI_COMMAND": "ADD"}, b"{}", timeout=5)


def test_socket_nobody_listens_on_means_doing_the_work_here(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, as after an agent killed outright: ECONNREFUSED
    with pytest.raises(AgentUnavailableError, match="refused"):
        forward(str(path), {"CNI_COMMAND": "ADD"}, b"{}")


def test_agent_timeout_is_code_11_and_the_plugin_does_not_redo_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cni import plugin

    def in_process(*args: object) -> tuple[int, bytes]:
        raise AssertionError("the plugin did the work the agent still has")

    monkeypatch.setattr(plugin, "execute", in_process)
    stdin = json.dumps({"cniVersion": "1.0.0", "stateDir": str(tmp_path)}).encode()
    environ = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "slow", ANSWER_TIMEOUT_ENV: "0.3"}
    out = io.BytesIO()
    with _agent_that(tmp_path / "agent.sock", _say_nothing):
        status = plugin.run(environ, io.BytesIO(stdin), out, str(tmp_path / "smarter-cni"))
    error = json.loads(out.getvalue())
    assert status == 1
    assert (error["cniVersion"], error["code"]) == ("1.0.0", 11)
    assert error["msg"] == "the smarter-cni agent did not answer in time"
    assert "within 0.3s" in error["details"]


def test_error_json_written_without_json_is_valid_for_any_text() -> None:
    text = 'a "quoted" \\path\\ with\nnewline, tab\t and ünïcode'
    stdin = b'{"cniVersion": "0.4.0", "prevResult": {"cniVersion": "1.0.0"}}'
    body = json.loads(error_output(stdin, 11, "msg " + text, text))
    assert body == {"cniVersion": "0.4.0", "code": 11, "msg": "msg " + text, "details": text}


def test_agent_takes_a_burst_of_connections_before_accepting_any(tmp_path: Path) -> None:
    from cni.agent import _Handler, _Server

    path = str(tmp_path / "agent.sock")
    server = _Server(path, _Handler)  # listening, but not accepting: as under load
    clients: list[socket.socket] = []
    try:
        for _ in range(100):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(client)
            client.settimeout(CONNECT_TIMEOUT)
            client.connect(path)  # with socketserver's default backlog (5) the 7th times out
    finally:
        for client in clients:
            client.close()
        server.server_close()


def test_request_over_the_agents_limit_is_a_cni_error_and_a_log_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from cni.agent import _Handler, _Nodes, _Server
    from cni.client import MAX_MESSAGE
    from smarter_common.hostroot import HostRoot

    path = str(tmp_path / "agent.sock")
    server = _Server(path, _Handler)
    server.nodes = _Nodes(HostRoot(tmp_path))
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    stdin = b'{"cniVersion": "0.4.0", "pad": "' + b"x" * MAX_MESSAGE + b'"}'
    plugin = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        plugin.settimeout(10)
        plugin.connect(path)

        def send() -> None:
            with contextlib.suppress(OSError):  # the agent stops reading at its limit
                plugin.sendall(encode_request({"CNI_COMMAND": "ADD"}, stdin))

        sender = threading.Thread(target=send)
        sender.start()
        answer = read_all(plugin)
        sender.join(timeout=10)
    finally:
        plugin.close()
        server.shutdown()
        server.server_close()
        serving.join(timeout=10)
    status, _, output = answer.partition(b"\n")
    error = json.loads(output)
    assert status == b"1"
    assert (error["code"], error["cniVersion"]) == (7, "0.4.0")
    assert error["msg"] == "request too large for the smarter-cni agent"
    logged = capfd.readouterr()
    assert "request_too_large" in logged.out + logged.err
    assert "Traceback" not in logged.out + logged.err


def test_agent_frees_the_cycles_a_request_left_before_the_next_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pyroute2's messages are reference cycles; left to the collector's thresholds they pile
    # up in its oldest generation and the agent's memory grows with the pods it served.
    import gc
    import weakref

    from cni import agent
    from cni.agent import _Handler, _Nodes, _Server
    from smarter_common.hostroot import HostRoot

    class Message:
        parent: object = None

    left: list[weakref.ref[Message]] = []

    def answer_leaving_a_cycle(message: bytes, nodes: object) -> bytes:
        cycle = Message()
        cycle.parent = cycle
        left.append(weakref.ref(cycle))
        return b"0\n{}"

    monkeypatch.setattr(agent, "answer", answer_leaving_a_cycle)
    path = str(tmp_path / "agent.sock")
    server = _Server(path, _Handler)
    server.nodes = _Nodes(HostRoot(tmp_path))
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    # Only the agent's own collection may free the cycle, not a threshold reached by chance.
    gc.disable()
    try:
        plugin = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with plugin:
            plugin.settimeout(10)
            plugin.connect(path)
            plugin.sendall(encode_request({"CNI_COMMAND": "DEL"}, b"{}"))
            plugin.shutdown(socket.SHUT_WR)
            read_all(plugin)
        deadline = time.monotonic() + 5  # the agent collects once the connection is closed
        while left and left[0]() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        gc.enable()
        server.shutdown()
        server.server_close()
        serving.join(timeout=10)
    assert len(left) == 1
    assert left[0]() is None
