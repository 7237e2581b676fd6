import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smarter_common import logs


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_when_stream_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(logs.LOG_FORMAT_ENV, raising=False)
    out = io.StringIO()
    logs.configure(stream=out)
    logs.get_logger("cni", container_id="abc").info("lease_taken", ip="10.0.0.2")
    record = json.loads(out.getvalue())
    assert record["event"] == "lease_taken"
    assert record["container_id"] == "abc"
    assert record["ip"] == "10.0.0.2"
    assert record["level"] == "info"
    assert "timestamp" in record


def test_console_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(logs.LOG_FORMAT_ENV, raising=False)
    out = _Tty()
    logs.configure(stream=out)
    logs.get_logger("cni").info("bridge_ready", bridge="smarter0")
    text = out.getvalue()
    assert "bridge_ready" in text and "bridge=smarter0" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_flag_json_wins_over_terminal() -> None:
    out = _Tty()
    logs.configure(fmt="json", stream=out)
    logs.get_logger("x").info("hello")
    assert json.loads(out.getvalue())["event"] == "hello"


def test_level_filters_below(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(logs.LOG_LEVEL_ENV, "warning")
    out = io.StringIO()
    logs.configure(fmt="json", stream=out)
    logger = logs.get_logger("x")
    logger.info("quiet")
    logger.warning("loud")
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert events == ["loud"]


def test_bad_level_and_format_name_the_value() -> None:
    with pytest.raises(ValueError, match="'chatty'"):
        logs.resolve_level("chatty")
    with pytest.raises(ValueError, match="'xml'"):
        logs.resolve_format("xml", io.StringIO())


def test_runc_logger_writes_runcs_json_entries_with_bound_fields_first() -> None:
    out = io.StringIO()
    log = logs.RuncLogger(out, level=20, log_format="json").bind(container_id="fw1", core="r0")
    log.info("core_started", firmware="smarter-fw1.elf")
    entry = json.loads(out.getvalue())
    assert list(entry) == ["level", "msg", "time", "container_id", "core", "firmware"]
    assert (entry["level"], entry["msg"], entry["core"]) == ("info", "core_started", "r0")
    assert "event" not in entry and "timestamp" not in entry
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["time"])


def test_runc_logger_text_is_logrus_style_and_the_same_as_a_hand_written_entry() -> None:
    out = io.StringIO()
    logs.RuncLogger(out, level=20, log_format="text").bind(logger="x").error('a "quoted" word')
    logged = out.getvalue()
    assert re.fullmatch(r'time="[^"]+" level=error msg="a \\"quoted\\" word" logger=x\n', logged)
    by_hand = logs.runc_entry('a "quoted" word', fields={"logger": "x"})
    assert logged.split(" ", 1)[1] == by_hand.split(" ", 1)[1]


def test_runc_logger_writes_text_unless_asked_for_json() -> None:
    assert logs.RuncLogger(io.StringIO(), level=20, log_format="").log_format == "text"
    assert logs.RuncLogger(io.StringIO(), level=20, log_format="json").log_format == "json"


def test_runc_logger_leaves_out_entries_below_its_level() -> None:
    out = io.StringIO()
    log = logs.RuncLogger(out, level=logs.resolve_level("warning"), log_format="json")
    log.debug("chatty")
    log.info("quiet")
    log.warning("console_missing")
    log.error("core crashed")
    assert [json.loads(line)["level"] for line in out.getvalue().splitlines()] == [
        "warning",
        "error",
    ]


def test_runc_logger_call_fields_win_over_bound_ones_but_never_change_the_level() -> None:
    out = io.StringIO()
    log = logs.RuncLogger(out, level=10, log_format="json").bind(core="remoteproc0")
    log.info("console", core="remoteproc1", level="error")
    entry = json.loads(out.getvalue())
    assert (entry["level"], entry["core"]) == ("info", "remoteproc1")


def test_runc_logger_writes_a_value_json_cannot_hold_as_its_text() -> None:
    out = io.StringIO()
    logs.RuncLogger(out, level=20, log_format="json").info("console", device=Path("/dev/tty0"))
    assert json.loads(out.getvalue())["device"] == "/dev/tty0"


def test_runc_logger_and_level_names_need_neither_structlog_nor_logging() -> None:
    probe = (
        "import io, sys; from smarter_common import logs;"
        " log = logs.RuncLogger(io.StringIO(), level=logs.resolve_level('debug'),"
        " log_format='json').bind(core='r0'); log.info('core_started'); log.error('x');"
        " print('structlog' in sys.modules, 'logging' in sys.modules, 'asyncio' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False", "False"]


def test_level_names_are_the_logging_modules() -> None:
    import logging

    for name, number in logging.getLevelNamesMapping().items():
        assert logs.resolve_level(name.lower()) == number


def test_runc_entry_needs_no_structlog() -> None:
    probe = (
        "import sys; from smarter_common.logs import runc_entry; runc_entry('x');"
        " print('structlog' in sys.modules, 'logging' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]


def test_lazy_logger_says_nothing_below_its_default_and_imports_nothing_for_it() -> None:
    probe = (
        "import sys; from smarter_common.logs import LazyLogger;"
        " LazyLogger('smarter-cni').bind(container_id='c').info('pod_added');"
        " print('structlog' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != logs.LOG_LEVEL_ENV},
    )
    assert result.stdout.split() == ["False"]
    assert result.stderr == ""


def test_lazy_logger_sets_up_logging_once_at_its_first_entry() -> None:
    probe = (
        "import structlog; from smarter_common.logs import LazyLogger;"
        " log = LazyLogger('smarter-cni', default_level='info').bind(container_id='c');"
        " log.info('pod_added', address='10.0.0.2'); log.warning('lock_unavailable');"
        " print(structlog.is_configured())"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, logs.LOG_FORMAT_ENV: "json", logs.LOG_LEVEL_ENV: ""},
    )
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert [entry["event"] for entry in entries] == ["pod_added", "lock_unavailable"]
    assert entries[0]["container_id"] == "c" and entries[0]["logger"] == "smarter-cni"
    assert result.stdout.split() == ["True"]


def test_lazy_logger_refuses_a_bad_level_when_built_before_any_work() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(logs.LOG_LEVEL_ENV, "chatty")
        with pytest.raises(ValueError, match="'chatty'"):
            logs.LazyLogger("smarter-cni")
