"""A firmware container's record (`state.json`): saved, loaded, refused; and what reading it costs
a `kill` in imports (issue 16)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime_handler import state
from runtime_handler.errors import ContainerNotFoundError, ContainerStateError
from smarter_common.procfs import process_start_time

REPO = Path(__file__).resolve().parents[2]

# The fields in the order state.json has always had them: the file outlives an upgrade.
SAVED_ORDER = [
    "id", "bundle", "rootfs", "entrypoint", "core", "firmware_name", "firmware_dir", "lock_path",
    "host_root", "log", "log_format", "oci_version", "created", "pid", "pid_start", "status",
    "exit_code", "error", "firmware_placed", "started", "annotations",
]  # fmt: skip


def _record(**changes: object) -> state.ContainerRecord:
    record = state.ContainerRecord(
        id="fw", bundle="/b", rootfs="/b/rootfs", entrypoint="/firmware.elf", core="remoteproc0",
        firmware_name="smarter-fw.elf", firmware_dir="/lib/firmware", lock_path="/run/x.lock",
        host_root="/", log=None, log_format="json",
    )  # fmt: skip
    for name, value in changes.items():
        setattr(record, name, value)
    return record


def test_a_saved_record_loads_equal_with_every_field(tmp_path: Path) -> None:
    record = _record(
        pid=4242, pid_start="98765", status=state.STATUS_RUNNING, exit_code=137,
        error="remoteproc0 is crashed while running smarter-fw.elf", firmware_placed=True,
        started="2026-12-01T16:00:00.000000001Z", log="/b/log.json",
        annotations={"io.kubernetes.cri.sandbox-id": "a" * 64, "note": "é \" \\ \n"},
    )  # fmt: skip

    state.save(str(tmp_path), record)

    loaded = state.load(str(tmp_path))
    assert loaded == record
    assert loaded is not record
    assert state.load(tmp_path) == record, "a Path names the directory as well as a str"


def test_state_json_keeps_its_fields_and_their_order(tmp_path: Path) -> None:
    state.save(tmp_path, _record())

    saved = json.loads((tmp_path / state.RECORD_FILE).read_text())

    assert list(saved) == SAVED_ORDER
    assert saved["status"] == "created" and saved["annotations"] == {}
    assert saved["oci_version"] == state.OCI_VERSION


def test_each_record_has_its_own_annotations() -> None:
    first, second = _record(), _record()
    first.annotations["k"] = "v"
    assert second.annotations == {}


def test_a_record_takes_only_its_fields() -> None:
    record = _record()
    with pytest.raises(AttributeError):
        record.colour = "red"  # type: ignore[attr-defined]
    assert not hasattr(record, "__dict__")


def test_firmware_path_is_the_placed_file() -> None:
    assert _record().firmware_path == Path("/lib/firmware/smarter-fw.elf")


def _write_fields(directory: Path, **changes: object) -> Path:
    fields = _record().as_dict() | changes
    path = directory / state.RECORD_FILE
    path.write_text(json.dumps({name: value for name, value in fields.items() if value != DROP}))
    return path


DROP = object()


def test_an_unknown_field_in_state_json_is_refused_naming_it(tmp_path: Path) -> None:
    path = _write_fields(tmp_path, colour="red")

    with pytest.raises(ContainerStateError) as refused:
        state.load(tmp_path)

    assert refused.value.message == f"container state {path} is unreadable: unknown fields 'colour'"
    assert refused.value.hint == "`delete --force` ends the container and removes it"


def test_a_missing_field_in_state_json_is_refused_naming_it(tmp_path: Path) -> None:
    _write_fields(tmp_path, core=DROP, log=DROP)

    with pytest.raises(ContainerStateError, match=r": missing fields 'core', 'log' \("):
        state.load(tmp_path)


def test_a_field_with_a_default_may_be_missing(tmp_path: Path) -> None:
    _write_fields(tmp_path, started=DROP, annotations=DROP)
    assert state.load(tmp_path) == _record()


# What a crash, a full disk or a hand edit leaves in state.json, and what the operator is told.
UNREADABLE: dict[str, tuple[str | bytes, str]] = {
    "empty": ("", "the file is empty"),
    "blank": (" \n", "the file is empty"),
    "cut short": ('{"id": "fw", "bund', "not JSON: Unterminated string starting at: line 1"),
    "not JSON": ("id=fw\n", "not JSON: Expecting value: line 1 column 1 (char 0)"),
    "not UTF-8": (b'{"id": "\xff"}', "not UTF-8 text (invalid start byte)"),
    "zeros": (b"\0" * 64, "not JSON: Expecting value: line 1 column 1 (char 0)"),
    "array": ("[1, 2]\n", "a JSON array where an object is expected"),
    "null": ("null", "a JSON null where an object is expected"),
    "nested too deep": ("[" * 100_000, "not JSON: maximum recursion depth exceeded"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_a_state_json_that_is_no_record_is_refused_saying_what_is_wrong(
    tmp_path: Path, name: str
) -> None:
    content, problem = UNREADABLE[name]
    path = tmp_path / state.RECORD_FILE
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)

    with pytest.raises(ContainerStateError) as refused:
        state.load(tmp_path)

    assert refused.value.path == str(path)
    assert refused.value.problem.startswith(problem)


WRONG_TYPES = {
    "pid": ("12", "field 'pid' is a JSON string, not int"),
    "core": (None, "field 'core' is a JSON null, not str"),
    "log": (7, "field 'log' is a JSON number, not str | None"),
    "exit_code": (1.5, "field 'exit_code' is a JSON number, not int | None"),
    "firmware_placed": (1, "field 'firmware_placed' is a JSON number, not bool"),
    "annotations": (["a"], "field 'annotations' is a JSON array, not dict[str, str]"),
    "status": ("paused", "field 'status' is 'paused', not one of created, running, stopped"),
}  # fmt: skip


@pytest.mark.parametrize("field", list(WRONG_TYPES))
def test_a_field_of_the_wrong_type_is_refused_naming_it(tmp_path: Path, field: str) -> None:
    value, problem = WRONG_TYPES[field]
    _write_fields(tmp_path, **{field: value})

    with pytest.raises(ContainerStateError) as refused:
        state.load(tmp_path)

    assert refused.value.problem == problem


def test_true_is_no_pid_and_an_annotation_is_a_string(tmp_path: Path) -> None:
    _write_fields(tmp_path, pid=True)
    with pytest.raises(ContainerStateError, match="field 'pid' is a JSON boolean, not int"):
        state.load(tmp_path)
    _write_fields(tmp_path, annotations={"k": 1})
    with pytest.raises(ContainerStateError, match="'annotations' has a value that is not a str"):
        state.load(tmp_path)


def test_no_state_json_is_a_container_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ContainerNotFoundError, match="container does not exist"):
        state.load(tmp_path / "gone")


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, -2.5e3, null, true, false, "x\\u00e9\\n\\ud83d\\ude00"], "b": {"c": {}}}\n',
        ' \t\n{"padded": 1}  \r\n',
        '"just a string"',
        "12",
        "[]",
        '{"a": 1, "a": 2}',
        "é".join(['{"k": "', '"}']),
    ],
)
def test_parse_json_reads_what_json_loads_reads(text: str) -> None:
    assert state.parse_json(text) == json.loads(text)


def test_parse_json_reads_json_constants_as_json_loads() -> None:
    values = state.parse_json("[NaN, Infinity, -Infinity]")
    assert isinstance(values, list)
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf]


@pytest.mark.parametrize(
    "text", ["", "{", '{"a": }', '{"a": 1} trailing', '{"a": 1}\u00a0', '{"a": "\x01"}', "[1,]"]
)
def test_parse_json_refuses_what_json_loads_refuses_with_its_message(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as refused:
        state.parse_json(text)
    assert str(refused.value) == str(expected.value)


def test_parse_json_refuses_malformed_text_where_json_was_never_imported() -> None:
    # As containerd runs the runtime: a string cut short makes the C scanner raise json.decoder's
    # JSONDecodeError, which it finds only among modules already imported.
    probe = subprocess.run(
        [sys.executable, "-I", "-S", "-c",
         "import sys; sys.path.insert(0, sys.argv[1]);"
         "from runtime_handler.state import parse_json; parse_json('{\"a\": \"cut')",
         str(REPO)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert probe.stderr.splitlines()[-1] == (
        "json.decoder.JSONDecodeError: Unterminated string starting at: line 1 column 7 (char 6)"
    )


# Issue 16: kill -> stopped pays for every import of `kill`. The runtime's main, run as
# containerd runs it (-I -S), kills a running firmware container; then what it imported.
_KILL_PROBE = """
import sys
sys.path.insert(0, sys.argv.pop(1))
from runtime_handler.__main__ import main
code = main(sys.argv[1:])
print(code, *sorted(sys.modules))
"""
# What a record's reader used to import: dataclasses (inspect, ast, dis, tokenize), pathlib
# (fnmatch, urllib.parse, ipaddress), json.decoder (re, enum, functools, collections).
_NOT_FOR_KILL = (
    "dataclasses", "inspect", "pathlib", "fnmatch", "urllib", "json", "json.decoder", "re",
    "enum", "typing", "collections", "functools",
)  # fmt: skip


def test_kill_of_a_running_firmware_container_imports_no_heavy_library(tmp_path: Path) -> None:
    record = _record(pid=os.getpid(), pid_start=process_start_time(os.getpid()))
    record.status = state.STATUS_RUNNING
    directory = Path(state.container_dir(str(tmp_path), "fw"))
    directory.mkdir(parents=True)
    state.save(directory, record)
    os.mkfifo(directory / state.CONTROL_FIFO, 0o600)
    supervisor_end = os.open(directory / state.CONTROL_FIFO, os.O_RDONLY | os.O_NONBLOCK)
    try:
        probe = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _KILL_PROBE, str(REPO),
             "--root", str(tmp_path), "kill", "fw", "TERM"],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        told = os.read(supervisor_end, 100)
    finally:
        os.close(supervisor_end)

    assert probe.returncode == 0, probe.stderr
    code, *imported = probe.stdout.split()
    assert code == "0", probe.stderr
    assert told == b"kill 15\n", "the probe did not kill: it is blind"
    assert "runtime_handler.firmware_kill" in imported
    assert not sorted(set(imported) & set(_NOT_FOR_KILL))
