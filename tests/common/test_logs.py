import io
import json

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
