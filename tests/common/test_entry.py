"""The one entry of every program's command line: one stderr line per error, documented codes."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smarter_common import entry
from smarter_common.cli import add_common_arguments
from smarter_common.errors import ConfigError, HostPathError, SmarterError

BIN = Path(sys.executable).parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smarter-test")
    add_common_arguments(parser)
    return parser


def _raising(error: BaseException) -> entry.Command:
    def command(_args: argparse.Namespace) -> int:
        raise error

    return command


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (SmarterError("core busy", hint="stop it first"), 1,
         "smarter-test: core busy (stop it first)"),
        (HostPathError("/sys is not mounted"), 1, "smarter-test: /sys is not mounted"),
        (ConfigError("rule 2: bad field"), 2, "smarter-test: rule 2: bad field"),
        (FileNotFoundError(2, "No such file or directory", "/etc/x"), 1,
         "smarter-test: /etc/x: No such file or directory"),
        (KeyboardInterrupt(), 130, "smarter-test: "),
    ],
    ids=["refused", "host-path", "config", "os-error", "interrupted"],
)  # fmt: skip
def test_each_error_type_is_one_stderr_line_and_its_documented_code(
    error: BaseException, code: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert entry.run("smarter-test", _parser(), _raising(error), ["--log-format", "json"]) == code
    captured = capsys.readouterr()
    assert captured.err == line + "\n"
    assert captured.out == ""


def test_a_multi_line_message_is_still_one_line() -> None:
    out = io.StringIO()
    assert entry.fail("p", SmarterError("first\n\nsecond"), out) == 1
    assert out.getvalue() == "p: first; second\n"


def test_a_bad_log_flag_is_a_usage_error_before_the_command_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ran: list[bool] = []

    def command(_args: object) -> int:
        ran.append(True)
        return 0

    code = entry.run("smarter-test", _parser(), command, ["--log-level", "chatty"])
    assert code == entry.EXIT_USAGE
    assert capsys.readouterr().err == (
        "smarter-test: log level 'chatty' is not one of debug, info, warning, error\n"
    )
    assert ran == []


def test_an_argparse_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as stopped:
        entry.run("smarter-test", _parser(), lambda _args: 0, ["--no-such-flag"])
    assert stopped.value.code == entry.EXIT_USAGE


def test_success_is_0_and_the_commands_own_code_is_kept() -> None:
    assert entry.run("smarter-test", _parser(), lambda _args: None, []) == 0
    assert entry.run("smarter-test", _parser(), lambda _args: 3, []) == 3


@pytest.mark.parametrize(("fmt", "json_lines"), [("json", True), ("console", False)])
def test_logs_of_a_command_follow_the_format_and_its_failure_stays_one_plain_line(
    fmt: str, json_lines: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    def command(_args: argparse.Namespace) -> int:
        from smarter_common.logs import get_logger

        get_logger("smarter-test").info("rules_loaded", rules=2)
        raise SmarterError("no kubelet socket")

    assert entry.run("smarter-test", _parser(), command, ["--log-format", fmt]) == 1
    *logged, failure = capsys.readouterr().err.splitlines()
    assert failure == "smarter-test: no kubelet socket"
    [entry_line] = logged
    if json_lines:
        assert json.loads(entry_line)["event"] == "rules_loaded"
    else:
        assert "rules_loaded" in entry_line and "rules=2" in entry_line
        with pytest.raises(json.JSONDecodeError):
            json.loads(entry_line)


def test_smarter_sim_says_a_refusal_once(tmp_path: Path) -> None:
    # It used to log the error as a JSON entry and print it again.
    result = subprocess.run(
        [BIN / "smarter-sim", "pack-firmware", "--elf", str(tmp_path / "absent.elf"), "--mcu",
         "cortex-m4", "--ref", "localhost/absent:1", "--out", str(tmp_path / "absent.tar")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SMARTER_LOG_FORMAT": "json"},
    )  # fmt: skip
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("smarter-sim: cannot read firmware ")
    assert list(tmp_path.iterdir()) == []


def test_smarter_device_manager_refuses_a_bad_log_format_with_code_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [BIN / "smarter-device-manager", "--list", "--host-root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SMARTER_LOG_FORMAT": "xml"},
    )
    assert result.returncode == 2
    assert result.stderr == (
        "smarter-device-manager: log format 'xml' is not one of auto, json, console\n"
    )
