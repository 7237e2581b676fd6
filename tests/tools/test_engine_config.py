"""`install-engine-config` gives podman and Docker the runtime `hybrid` and keeps all they had.

Host roots are temporary directories; podman's own packaged containers.conf is the starting
point where the machine has one. podman itself reading the result is shown in
test_podman_and_ctr.py.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime_handler import engine_config
from runtime_handler.engine_config import (
    EngineConfigError,
    docker_with_runtime,
    podman_with_runtime,
)
from smarter_common.hostroot import HostRoot

BINARY = "/usr/local/bin/smarter-hybrid-runtime"
DEBIAN_CONTAINERS_CONF = Path("/usr/share/containers/containers.conf")
CONF = "/etc/containers/containers.conf"
DAEMON_JSON = "/etc/docker/daemon.json"


def _runtimes(text: str) -> dict[str, object]:
    runtimes: dict[str, object] = tomllib.loads(text)["engine"]["runtimes"]
    return runtimes


def test_podman_packaged_config_gets_the_runtime_under_its_own_runtimes_table() -> None:
    original = DEBIAN_CONTAINERS_CONF.read_text()
    updated = podman_with_runtime(original, source=CONF)
    assert updated is not None
    assert _runtimes(updated) == {"hybrid": [BINARY]}
    without = tomllib.loads(updated)
    del without["engine"]["runtimes"]["hybrid"]
    assert without == tomllib.loads(original)
    assert updated.count("[engine.runtimes]") == 1


def test_podman_existing_runtimes_and_settings_are_kept() -> None:
    original = (
        '[containers]\nlog_size_max = 4096\n\n[engine]\nruntime = "crun"\n\n'
        '[engine.runtimes] # the node\'s\ncrun = ["/usr/bin/crun"]\nrunc = ["/usr/sbin/runc"]\n'
    )
    updated = podman_with_runtime(original, source=CONF)
    assert updated is not None
    document = tomllib.loads(updated)
    assert document["engine"]["runtime"] == "crun"
    assert document["containers"] == {"log_size_max": 4096}
    assert _runtimes(updated) == {
        "crun": ["/usr/bin/crun"],
        "runc": ["/usr/sbin/runc"],
        "hybrid": [BINARY],
    }


def test_podman_config_without_runtimes_table_gets_one_appended() -> None:
    original = '[engine]\ncgroup_manager = "cgroupfs"\n'
    updated = podman_with_runtime(original, source=CONF)
    assert updated is not None
    assert updated.startswith(original)
    assert tomllib.loads(updated)["engine"] == {
        "cgroup_manager": "cgroupfs",
        "runtimes": {"hybrid": [BINARY]},
    }


def test_podman_empty_config_becomes_the_runtime_table() -> None:
    assert podman_with_runtime("", source=CONF) == f'[engine.runtimes]\nhybrid = ["{BINARY}"]\n'


def test_podman_config_with_the_runtime_is_left_as_it_is() -> None:
    once = podman_with_runtime(DEBIAN_CONTAINERS_CONF.read_text(), source=CONF)
    assert once is not None
    assert podman_with_runtime(once, source=CONF) is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[engine.runtimes]\nhybrid = ["/opt/other"]\n', "already defines the runtime 'hybrid'"),
        ("[engine\nruntime = 1\n", "is not TOML"),
        ('[engine]\nruntimes = "crun"\n', "engine.runtimes is not a table"),
        # An inline table cannot be extended by a later [engine.runtimes] header.
        ('[engine]\nruntimes = {crun = ["/usr/bin/crun"]}\n', "cannot be added to"),
    ],
)
def test_podman_foreign_or_conflicting_config_is_refused(text: str, says: str) -> None:
    with pytest.raises(EngineConfigError, match=says):
        podman_with_runtime(text, source=CONF)


def test_docker_config_keeps_every_member_and_runtime() -> None:
    original = json.dumps(
        {
            "log-driver": "journald",
            "runtimes": {"crun": {"path": "/usr/bin/crun", "runtimeArgs": ["--debug"]}},
            "default-runtime": "runc",
        }
    )
    updated = docker_with_runtime(original, source=DAEMON_JSON)
    assert updated is not None
    document = json.loads(updated)
    assert list(document) == ["log-driver", "runtimes", "default-runtime"]
    assert document["runtimes"] == {
        "crun": {"path": "/usr/bin/crun", "runtimeArgs": ["--debug"]},
        "hybrid": {"path": BINARY},
    }
    assert docker_with_runtime(updated, source=DAEMON_JSON) is None


def test_docker_missing_config_becomes_the_runtime_alone() -> None:
    assert json.loads(docker_with_runtime("", source=DAEMON_JSON) or "") == {
        "runtimes": {"hybrid": {"path": BINARY}}
    }


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"runtimes": {"hybrid": {"path": "/opt/other"}}}', "already defines the runtime"),
        ("{'log-driver': 'journald'}", "is not JSON"),
        ('["runtimes"]', "is not a JSON object"),
        ('{"runtimes": ["hybrid"]}', "runtimes is not an object"),
    ],
)
def test_docker_foreign_or_conflicting_config_is_refused(text: str, says: str) -> None:
    with pytest.raises(EngineConfigError, match=says):
        docker_with_runtime(text, source=DAEMON_JSON)


def _node(tmp_path: Path, *, podman: bool = False, docker: bool = False) -> Path:
    root = tmp_path / "host"
    root.mkdir()
    for wanted, program in ((podman, "usr/bin/podman"), (docker, "usr/sbin/dockerd")):
        if wanted:
            (root / program).parent.mkdir(parents=True, exist_ok=True)
            (root / program).write_text("")
    return root


def test_install_configures_only_the_engines_on_the_node(tmp_path: Path) -> None:
    root = _node(tmp_path, podman=True)
    written = engine_config.install(HostRoot(root))
    assert [(item.engine, str(item.path), item.changed) for item in written] == [
        ("podman", CONF, True)
    ]
    assert _runtimes((root / CONF.lstrip("/")).read_text()) == {"hybrid": [BINARY]}
    assert not (root / "etc/docker").exists()


def test_install_a_second_time_changes_nothing(tmp_path: Path) -> None:
    root = _node(tmp_path, podman=True, docker=True)
    engine_config.install(HostRoot(root))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    again = engine_config.install(HostRoot(root))
    assert [item.changed for item in again] == [False, False]
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_an_existing_daemon_json_counts_as_docker_being_there(tmp_path: Path) -> None:
    root = _node(tmp_path)
    daemon_json = root / DAEMON_JSON.lstrip("/")
    daemon_json.parent.mkdir(parents=True)
    daemon_json.write_text('{"data-root": "/srv/docker"}\n')
    [item] = engine_config.install(HostRoot(root))
    assert (item.engine, item.changed) == ("docker", True)
    assert json.loads(daemon_json.read_text()) == {
        "data-root": "/srv/docker",
        "runtimes": {"hybrid": {"path": BINARY}},
    }


@pytest.mark.parametrize(
    ("make_bad", "says"),
    [
        (lambda path: path.mkdir(), "cannot read /etc/docker/daemon.json"),
        (lambda path: path.write_bytes(b'{"log-driver": "\xff"}'), "is not UTF-8 text"),
        (lambda path: path.write_text("log-driver: journald\n"), "is not JSON"),
    ],
)
def test_an_unreadable_or_foreign_file_is_refused_and_nothing_is_written(
    tmp_path: Path, make_bad: Callable[[Path], object], says: str
) -> None:
    root = _node(tmp_path, podman=True, docker=True)
    daemon_json = root / DAEMON_JSON.lstrip("/")
    daemon_json.parent.mkdir(parents=True)
    make_bad(daemon_json)
    before = sorted((str(p), p.is_dir()) for p in root.rglob("*"))
    with pytest.raises(EngineConfigError, match=says):
        engine_config.install(HostRoot(root))
    # podman's file would have been fine, but nothing is written unless everything can be.
    assert sorted((str(p), p.is_dir()) for p in root.rglob("*")) == before
    if daemon_json.is_file():
        assert b"hybrid" not in daemon_json.read_bytes()


def test_main_refuses_with_status_2_and_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _node(tmp_path, podman=True)
    conf = root / CONF.lstrip("/")
    conf.parent.mkdir(parents=True)
    conf.write_text('[engine.runtimes]\nhybrid = ["/opt/other"]\n')
    status = engine_config.main(["--host-root", str(root), "--log-format", "json"])
    assert status == 2  # a configuration refused (smarter_common.entry)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("smarter-hybrid-runtime install-engine-config: ")
    assert CONF in line and "/opt/other" in line
    assert conf.read_text() == '[engine.runtimes]\nhybrid = ["/opt/other"]\n'


def test_main_reloads_dockerd_only_when_daemon_json_changed(tmp_path: Path) -> None:
    root = _node(tmp_path, podman=True, docker=True)
    ran: list[list[str]] = []

    def run(command: list[str]) -> int:
        ran.append(command)
        return 0

    args = ["--host-root", str(root), "--reload", "--binary", "/opt/hybrid", "--log-format", "json"]
    assert engine_config.main(args, run=run) == 0
    assert ran == [engine_config.reload_command()]
    assert ran[0][-2:] == ["try-reload-or-restart", "docker.service"]
    daemon = json.loads((root / DAEMON_JSON.lstrip("/")).read_text())
    assert daemon["runtimes"]["hybrid"] == {"path": "/opt/hybrid"}
    assert engine_config.main(args, run=run) == 0
    assert len(ran) == 1


def test_the_runtime_command_offers_install_engine_config(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = _node(tmp_path, docker=True)
    command = [sys.executable, "-m", "runtime_handler", "install-engine-config"]
    result = subprocess.run(
        [*command, "--host-root", str(root)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    daemon_json = root / DAEMON_JSON.lstrip("/")
    assert json.loads(daemon_json.read_text()) == {"runtimes": {"hybrid": {"path": BINARY}}}
