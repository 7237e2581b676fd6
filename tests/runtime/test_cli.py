"""runc's command line as the shim writes it, parsed into what routing needs."""

from __future__ import annotations

from runtime_handler.runc_cli import DEFAULT_ROOT, parse

SHIM_GLOBALS = [
    "--root",
    "/run/containerd/runc/k8s.io",
    "--log",
    "/b/log.json",
    "--log-format",
    "json",
]


def test_create_as_the_shim_calls_it() -> None:
    call = parse([*SHIM_GLOBALS, "create", "--bundle", "/b", "--pid-file", "/b/init.pid", "c1"])
    assert call.root == "/run/containerd/runc/k8s.io"
    assert call.log == "/b/log.json"
    assert call.log_format == "json"
    assert call.command == "create"
    assert call.option("bundle") == "/b"
    assert call.option("pid-file") == "/b/init.pid"
    assert call.container_id == "c1"


def test_short_and_equals_forms_mean_the_same() -> None:
    call = parse(
        ["-root=/r", "--log-format=text", "create", "-b", "/b", "--console-socket=/s", "c"]
    )
    assert call.root == "/r"
    assert call.log_format == "text"
    assert call.option("bundle") == "/b"
    assert call.option("console-socket") == "/s"
    assert call.container_id == "c"


def test_kill_all_with_signal() -> None:
    call = parse([*SHIM_GLOBALS, "kill", "--all", "c1", "9"])
    assert call.switch("all")
    assert call.args == ["c1", "9"]


def test_delete_force_short_form() -> None:
    call = parse(["delete", "-f", "c1"])
    assert call.switch("force")
    assert call.container_id == "c1"
    assert call.root == DEFAULT_ROOT


def test_switches_between_global_options_do_not_eat_the_command() -> None:
    call = parse(["--systemd-cgroup", "--root", "/r", "--debug", "state", "c1"])
    assert call.debug
    assert call.command == "state"
    assert call.container_id == "c1"


def test_ps_format_value_is_not_taken_for_the_id() -> None:
    call = parse(["ps", "--format", "json", "c1"])
    assert call.option("format") == "json"
    assert call.container_id == "c1"


def test_exec_options_with_values_are_skipped_to_find_the_id() -> None:
    call = parse(["exec", "--process", "/tmp/p.json", "--detach", "--pid-file", "/p", "c1"])
    assert call.container_id == "c1"


def test_update_options_take_values() -> None:
    call = parse(["update", "--memory", "100M", "--resources", "-", "c1"])
    assert call.container_id == "c1"


def test_double_dash_ends_options() -> None:
    call = parse(["kill", "--", "-weird-id", "TERM"])
    assert call.args == ["-weird-id", "TERM"]


def test_no_command() -> None:
    call = parse(["--root", "/r"])
    assert call.command is None
    assert call.container_id is None


def test_usage_lists_every_variable_the_runtime_reads() -> None:
    from runtime_handler import settings
    from runtime_handler.__main__ import USAGE
    from smarter_common.remoteproc import ENV_RPROC

    listed = {line.split()[0] for line in USAGE.splitlines() if line.startswith("  SMARTER_")}
    assert listed == {*settings.NAMES, ENV_RPROC}
