"""The runtime's own settings: its variables, then the file beside the executable, then defaults."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from runtime_handler import settings
from runtime_handler.settings import SettingsError

from .conftest import RUNTIME, BuildElf, MakeBundle, log_messages


def _settings(tmp_path: Path, text: str | None, **environ: str) -> settings.Settings:
    executable = tmp_path / "smarter-hybrid-runtime"
    if text is not None:
        (tmp_path / "smarter-hybrid-runtime.conf").write_text(text)
    return settings.load(str(executable), environ)


def test_defaults_without_a_file_or_variables(tmp_path: Path) -> None:
    found = _settings(tmp_path, None)
    assert (found.host_root, found.runc, found.start_timeout) == ("/", None, 10.0)
    assert (found.console_timeout, found.log_level) == (2.0, "info")


def test_the_file_takes_name_value_lines_comments_and_blank_lines(tmp_path: Path) -> None:
    found = _settings(
        tmp_path,
        "# gateway 7\n\n  SMARTER_START_TIMEOUT = 30 \nSMARTER_RUNC=/opt/runc\r\n"
        f"SMARTER_RUNTIME_HOST_ROOT={tmp_path}\nSMARTER_CONSOLE_TIMEOUT=0\n",
    )
    assert (found.start_timeout, found.runc, found.host_root) == (30.0, "/opt/runc", str(tmp_path))
    assert found.console_timeout == 0.0


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    found = _settings(
        tmp_path, "SMARTER_START_TIMEOUT=30\nSMARTER_LOG_LEVEL=debug\n", SMARTER_START_TIMEOUT="5"
    )
    assert (found.start_timeout, found.log_level) == (5.0, "debug")


def test_an_empty_value_counts_as_unset(tmp_path: Path) -> None:
    found = _settings(tmp_path, "SMARTER_RUNC=\n", SMARTER_START_TIMEOUT="")
    assert (found.runc, found.start_timeout) == (None, 10.0)


def test_the_shared_host_root_variable_is_ignored(tmp_path: Path) -> None:
    assert _settings(tmp_path, None, SMARTER_HOST_ROOT=str(tmp_path)).host_root == "/"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SMARTER_RUNC=/x\nSMARTER_HOST_ROOT=/gw\n", ":2: unknown setting 'SMARTER_HOST_ROOT'"),
        ("# ok\nexport SMARTER_RUNC\n", ":2: malformed line 'export SMARTER_RUNC': expected"),
        ("=/x\n", ":1: malformed line '=/x': expected NAME=value"),
    ],
)
def test_an_unknown_name_or_malformed_line_names_the_file_and_line(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        _settings(tmp_path, text)
    assert str(raised.value).startswith(f"{tmp_path}/smarter-hybrid-runtime.conf{message}")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("SMARTER_START_TIMEOUT=soon", "'soon' must be a number of seconds, more than 0"),
        ("SMARTER_START_TIMEOUT=0", "'0' must be a number of seconds, more than 0"),
        ("SMARTER_START_TIMEOUT=nan", "'nan' must be a number"),
        ("SMARTER_START_TIMEOUT=-5", "'-5' must be a number of seconds, more than 0"),
        ("SMARTER_START_TIMEOUT=-inf", "'-inf' must be a number of seconds, more than 0"),
        ("SMARTER_CONSOLE_TIMEOUT=nan", "'nan' must be a number of seconds, 0 or more"),
        ("SMARTER_CONSOLE_TIMEOUT=-0.5", "'-0.5' must be a number of seconds, 0 or more"),
        ("SMARTER_CONSOLE_TIMEOUT=-1", "'-1' must be a number of seconds, 0 or more"),
        ("SMARTER_CONSOLE_TIMEOUT=inf", "'inf' must be a number of seconds, 0 or more and at most"),
        ("SMARTER_CHANNEL_TIMEOUT=nan", "'nan' must be a number of seconds, 0 or more"),
        ("SMARTER_CHANNEL_TIMEOUT=-1", "'-1' must be a number of seconds, 0 or more"),
        ("SMARTER_CHANNEL_TIMEOUT=inf", "'inf' must be a number of seconds, 0 or more and at most"),
        ("SMARTER_LOG_LEVEL=loud", "'loud' must be one of debug, info, warning, error"),
        ("SMARTER_RUNTIME_HOST_ROOT=gw", "'gw' must be an absolute directory"),
    ],
)
def test_a_bad_value_is_refused_naming_where_it_was_set(
    tmp_path: Path, line: str, problem: str
) -> None:
    found = _settings(tmp_path, f"# x\n{line}\n")
    with pytest.raises(SettingsError) as raised:
        found.check()
    name = line.partition("=")[0]
    assert str(raised.value).startswith(
        f"{tmp_path}/smarter-hybrid-runtime.conf:2: {name}={problem}"
    )


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        _settings(tmp_path, None, SMARTER_START_TIMEOUT="1e9").check()
    assert str(raised.value).startswith(
        "environment variable SMARTER_START_TIMEOUT='1e9' must be a number of seconds"
    )


def _installed(tmp_path: Path, conf: str | None) -> Path:
    """The runtime exec'd from a directory of the test's own (through a symlink, which the
    settings lookup does not resolve), with `conf` as its settings file."""
    directory = tmp_path / "bin"
    directory.mkdir(parents=True)
    executable = directory / "smarter-hybrid-runtime"
    executable.symlink_to(RUNTIME)
    if conf is not None:
        (directory / "smarter-hybrid-runtime.conf").write_text(conf)
    return executable


def _run(executable: Path, *args: str, **environ: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTER_")} | environ
    result = subprocess.run(
        [str(executable), *args], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    return result.returncode, result.stdout, result.stderr


def test_the_file_beside_the_executable_names_runc(tmp_path: Path) -> None:
    executable = _installed(tmp_path, "SMARTER_RUNC=/bin/echo\n")
    code, out, _ = _run(executable, "--root", str(tmp_path), "features")
    assert (code, out) == (0, f"--root {tmp_path} features\n")


def test_a_malformed_file_is_refused_runc_style_for_every_call(tmp_path: Path) -> None:
    executable = _installed(tmp_path, "SMARTER_RUNC=/bin/echo\nSMARTER_HOST_ROOT=/gw\n")
    log = tmp_path / "log.json"
    code, out, err = _run(
        executable, "--root", str(tmp_path), "--log", str(log), "--log-format", "json",
        "features", SMARTER_RUNC="/bin/echo",
    )  # fmt: skip
    expected = f"{executable}.conf:2: unknown setting 'SMARTER_HOST_ROOT'"
    assert (code, out) == (1, "")
    assert err.startswith(expected) and "Traceback" not in err
    assert log_messages(log)[0].startswith(expected)


def test_the_host_root_comes_from_the_file_and_not_the_shared_variable(
    tmp_path: Path, make_bundle: MakeBundle, build_elf: BuildElf, runc_root: Path
) -> None:
    # A host whose core cannot be read (its `name` is a directory): only a runtime looking at
    # this host root reports that file.
    host = tmp_path / "host"
    name = host / "sys" / "class" / "remoteproc" / "remoteproc0" / "name"
    name.mkdir(parents=True)
    bundle = make_bundle(["/firmware.elf"], {"/firmware.elf": build_elf("cortex-m4")})
    log = bundle / "log.json"
    globals_ = ["--root", str(runc_root), "--log", str(log), "--log-format", "json"]
    create = [*globals_, "create", "--bundle", str(bundle), "fwx"]

    shared = _installed(tmp_path / "shared", None)
    assert _run(shared, *create, SMARTER_HOST_ROOT=str(host))[0] == 1
    assert f"cannot access {name}" not in json.dumps(log_messages(log))

    log.unlink()
    own = _installed(tmp_path / "own", f"SMARTER_RUNTIME_HOST_ROOT={host}\n")
    assert _run(own, *create)[0] == 1
    assert log_messages(log) == [f"cannot access {name}: Is a directory"]
    assert not (runc_root / "smarter-hybrid" / "fwx").exists()


def test_a_bad_timeout_refuses_create_before_a_core_is_touched(
    tmp_path: Path, make_bundle: MakeBundle, build_elf: BuildElf, runc_root: Path
) -> None:
    bundle = make_bundle(["/firmware.elf"], {"/firmware.elf": build_elf("cortex-m4")})
    log = bundle / "log.json"
    executable = _installed(tmp_path, "SMARTER_START_TIMEOUT=ten\n")
    code, _, err = _run(
        executable, "--root", str(runc_root), "--log", str(log), "--log-format", "json",
        "create", "--bundle", str(bundle), "fwx",
    )  # fmt: skip
    assert code == 1 and "Traceback" not in err
    assert log_messages(log)[0].startswith(
        f"{executable}.conf:1: SMARTER_START_TIMEOUT='ten' must be a number of seconds"
    )
    assert not (runc_root / "smarter-hybrid" / "fwx").exists()
