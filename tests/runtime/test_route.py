"""The zipapp's launcher: runc's calls go straight to runc, everything else to the runtime."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runtime_handler import runc_cli
from runtime_handler.route import LAUNCHER_VALUE_OPTIONS, is_runcs

from .conftest import HOST_ENV, log_messages, main_execs_runc

HOST_PYTHON = "/usr/bin/python3"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A --root holding one firmware container, `fw1`."""
    (tmp_path / "smarter-hybrid" / "fw1").mkdir(parents=True)
    (tmp_path / "smarter-hybrid" / "notdir").write_text("")
    return tmp_path


CALLS = [
    ["--root", "{root}", "state", "sandbox1"],
    ["--root={root}", "--log", "/l.json", "--log-format", "json", "kill", "--all", "c", "9"],
    ["--root", "{root}", "--systemd-cgroup", "delete", "--force", "sandbox1"],
    ["-root", "{root}", "ps", "--format", "json", "sandbox1"],
    ["--root", "{root}", "ps", "-f", "json", "fw1"],
    ["--root", "{root}", "events", "--interval", "5s", "sandbox1"],
    ["--root", "{root}", "state", "fw1"],
    ["--root", "{root}", "kill", "-a", "fw1", "KILL"],
    ["--root", "{root}", "delete", "notdir"],
    ["--root", "{root}", "state", "../x"],
    ["--root", "{root}", "state", ""],
    ["--root", "{root}", "start"],
    ["--root", "{root}", "create", "--bundle", "/b", "c1"],
    ["--root", "{root}", "exec", "--cwd", "/", "sandbox1", "true"],
    ["--root", "{root}", "update", "--memory", "1", "fw1"],
    ["--root", "{root}", "--", "state", "sandbox1"],
    ["--version"],
    ["--root", "{root}", "--help"],
    ["install-containerd-config", "--help"],
    [],
    ["state", "sandbox1"],
]


@pytest.mark.parametrize("call", CALLS, ids=lambda call: " ".join(call) or "nothing")
def test_launcher_hands_to_runc_exactly_what_the_runtime_would(
    call: list[str], root: Path
) -> None:
    argv = [word.replace("{root}", str(root)) for word in call]
    launcher, runtime = is_runcs(argv), main_execs_runc(argv)
    # The launcher never takes one of our calls; of the commands it decides, it takes every
    # call that is runc's, and leaves the rest (create, list...) to main().
    if launcher:
        assert runtime, argv
    if runtime and runc_cli.parse(argv).command in LAUNCHER_VALUE_OPTIONS:
        assert launcher, argv


def test_launcher_takes_the_commonest_calls_itself(root: Path) -> None:
    for command in (["state", "s1"], ["kill", "--all", "s1", "9"], ["delete", "-f", "s1"]):
        assert is_runcs(["--root", str(root), "--log", "/l", *command]), command



def test_zipapp_through_its_shebang_routes_each_call(zipapp: Path, root: Path) -> None:
    env = {**HOST_ENV, "SMARTER_RUNC": "/bin/echo"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        log = root / "log.json"
        log.unlink(missing_ok=True)
        return subprocess.run(
            [str(zipapp), "--root", str(root), "--log", str(log), "--log-format", "json", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    assert run("state", "sandbox1").stdout.endswith(" state sandbox1\n")
    ours = run("state", "fw1")  # our directory without a record yet
    assert (ours.returncode, log_messages(root / "log.json")) == (1, ["container does not exist"])
    bad = run("delete", "../x")
    assert (bad.returncode, log_messages(root / "log.json")) == (1, ["invalid container ID format"])
    for runner in ([str(zipapp)], [HOST_PYTHON, "-I", str(zipapp)]):
        version = subprocess.run(
            [*runner, "--version"], capture_output=True, text=True, env=env, cwd="/", check=False
        )
        assert version.stdout.startswith("smarter-hybrid-runtime "), version.stderr


@pytest.fixture
def installed(zipapp: Path, tmp_path: Path) -> Path:
    """The zipapp as installed in a directory of the test's own, where its settings file goes."""
    directory = tmp_path / "bin"
    directory.mkdir()
    target = directory / "smarter-hybrid-runtime"
    target.write_bytes(zipapp.read_bytes())
    target.chmod(0o755)
    return target


def test_launcher_takes_runc_from_the_settings_file(installed: Path, root: Path) -> None:
    # What it imports doing so: tests/test_fast_paths.py.
    Path(f"{installed}.conf").write_text(
        "# node 7\nSMARTER_START_TIMEOUT=20\nSMARTER_RUNC=/bin/echo\n"
    )
    direct = subprocess.run(
        [str(installed), "--root", str(root), "kill", "s1", "9"],
        capture_output=True, text=True, env=HOST_ENV, check=False,
    )  # fmt: skip
    assert direct.stdout == f"--root {root} kill s1 9\n"


def test_launcher_leaves_a_malformed_settings_file_to_the_runtime_which_refuses(
    installed: Path, root: Path
) -> None:
    Path(f"{installed}.conf").write_text("SMARTER_RUNC=/bin/echo\nSMARTER_HOST_ROOT=/gw\n")
    log = root / "log.json"
    result = subprocess.run(
        [str(installed), "--root", str(root), "--log", str(log), "--log-format", "json",
         "state", "s1"],
        capture_output=True, text=True, env={**HOST_ENV, "SMARTER_RUNC": "/bin/echo"}, check=False,
    )  # fmt: skip
    expected = f"{installed}.conf:2: unknown setting 'SMARTER_HOST_ROOT'"
    assert (result.returncode, result.stdout) == (1, "")
    assert log_messages(log)[0].startswith(expected)
