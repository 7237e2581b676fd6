import io
import json
import os
import re
import subprocess
import sys

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


def test_runc_profile_writes_runcs_json_entries_with_fields() -> None:
    out = io.StringIO()
    assert logs.configure(fmt="json", stream=out, profile="runc") == "json"
    logs.get_logger("smarter-hybrid-runtime", container_id="fw1").info("core_started", core="r0")
    entry = json.loads(out.getvalue())
    assert entry["msg"] == "core_started"
    assert entry["level"] == "info"
    assert entry["container_id"] == "fw1" and entry["core"] == "r0"
    assert "event" not in entry and "timestamp" not in entry
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["time"])


def test_runc_profile_text_is_logrus_style_and_the_same_as_a_hand_written_entry() -> None:
    out = io.StringIO()
    assert logs.configure(fmt="text", stream=out, profile="runc") == "text"
    logs.get_logger("x").error('a "quoted" word')
    logged = out.getvalue()
    assert re.fullmatch(r'time="[^"]+" level=error msg="a \\"quoted\\" word" logger=x\n', logged)
    by_hand = logs.runc_entry('a "quoted" word', fields={"logger": "x"})
    assert logged.split(" ", 1)[1] == by_hand.split(" ", 1)[1]


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
