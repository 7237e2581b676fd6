"""Runtime errors in runc's log formats, which the shim reads back."""

from __future__ import annotations

import json
import re
from pathlib import Path

from runtime_handler.errors import ContainerNotFoundError, log_line, report


def test_json_entry_has_level_msg_and_time() -> None:
    entry = json.loads(log_line('quote " and \\ kept', log_format="json"))
    assert entry["level"] == "error"
    assert entry["msg"] == 'quote " and \\ kept'
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["time"])


def test_text_entry_is_logrus_style() -> None:
    line = log_line('a "quoted" word', log_format="text")
    assert re.fullmatch(r'time="[^"]+" level=error msg="a \\"quoted\\" word"\n', line)


def test_report_appends_to_the_log_and_returns_1(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    log.write_text('{"level":"info","msg":"earlier","time":"t"}\n')
    assert report(ContainerNotFoundError(), log=str(log), log_format="json") == 1
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["msg"] for line in lines] == ["earlier", "container does not exist"]
