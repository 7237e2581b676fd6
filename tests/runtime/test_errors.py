"""Runtime errors in runc's log formats, which the shim reads back."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from runtime_handler.errors import ContainerNotFoundError, log_line, report

from .conftest import BuildElf, MakeBundle, log_messages, runtime


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


def test_unreadable_core_attribute_is_reported_in_runcs_log_not_as_a_traceback(
    tmp_path: Path, make_bundle: MakeBundle, build_elf: BuildElf, runc_root: Path
) -> None:
    # An attribute read that fails other than "no such file" (here EISDIR; on a board EIO, or
    # ENOTCONN from a dead mount) must reach the shim as one line, like every refusal.
    host = tmp_path / "host"
    name = host / "sys" / "class" / "remoteproc" / "remoteproc0" / "name"
    name.mkdir(parents=True)
    bundle = make_bundle(["/firmware.elf"], {"/firmware.elf": build_elf("cortex-m4")})
    log = bundle / "log.json"

    result = runtime(
        "--root", str(runc_root), "--log", str(log), "--log-format", "json",
        "create", "--bundle", str(bundle), "fwx",
        env={**os.environ, "SMARTER_RUNTIME_HOST_ROOT": str(host)},
    )  # fmt: skip

    assert result.returncode == 1
    assert log_messages(log) == [f"cannot access {name}: Is a directory"]
    assert "Traceback" not in result.stderr
    assert not (runc_root / "smarter-hybrid" / "fwx").exists()
