"""The rules file: validation (every refusal, precisely) and matching against a /dev tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_plugin.rules import (
    MAX_DEVICE_ID,
    DevEntry,
    NodeSpec,
    Rejection,
    Rule,
    device_ids,
    load_rules,
    match_devices,
    parse_rules,
    resource_short_name,
)
from device_plugin.server import preferred_allocation
from smarter_common.errors import ConfigError

DEPLOYED_RULES = Path(__file__).resolve().parents[2] / "deploy/device-manager/rules-configmap.yaml"
ORIGINAL_RULES = Path(__file__).resolve().parents[1] / "fixtures/device-manager/original-conf.yaml"


def rules(text: str) -> list[Rule]:
    return parse_rules(text, source="conf.yaml")


def test_original_conf_yaml_is_accepted() -> None:
    parsed = rules(
        "- devicematch: ^snd$\n  nummaxdevices: 20\n"
        "- devicematch: ^ttyUSB[0-9]*$\n  nummaxdevices: 1\n"
    )
    assert [(r.number, r.devicematch, r.nummaxdevices) for r in parsed] == [
        (1, "^snd$", 20),
        (2, "^ttyUSB[0-9]*$", 1),
    ]


def test_an_empty_list_is_no_rules() -> None:
    assert rules("[]") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "devicematch: ^tty$\nnummaxdevices: 1\n",
            "conf.yaml: expected a list of rules, found a dict",
        ),
        ("", "conf.yaml: expected a list of rules, found nothing"),
        ("- [unclosed\n", "conf.yaml: not valid YAML"),
        (
            "- devicematch: ^tty$\n  nummaxdevices: 1\n- ttyUSB0\n",
            "conf.yaml: rule 2: expected a mapping with devicematch and nummaxdevices, "
            "found str 'ttyUSB0'",
        ),
        (
            "- devicematch: ^tty$\n  nummaxdevices: 1\n  permissions: rwm\n",
            "conf.yaml: rule 1: unknown field 'permissions'",
        ),
        ("- devicematch: ^tty$\n", "conf.yaml: rule 1: field 'nummaxdevices' is missing"),
        ("- nummaxdevices: 1\n", "conf.yaml: rule 1: field 'devicematch' is missing"),
        (
            "- devicematch: 5\n  nummaxdevices: 1\n",
            "conf.yaml: rule 1: field 'devicematch' must be a string (a regular expression), "
            "found 5",
        ),
        (
            "- devicematch: ''\n  nummaxdevices: 1\n",
            "conf.yaml: rule 1 (devicematch ''): field 'devicematch' is empty and would match "
            "every entry in /dev",
        ),
        (
            "- devicematch: ^ok$\n  nummaxdevices: 1\n- devicematch: ^tty[\n  nummaxdevices: 1\n",
            "conf.yaml: rule 2 (devicematch '^tty['): field 'devicematch' is not a valid "
            "RE2 regular expression: missing ]: [",
        ),
        (
            "- devicematch: ^tty$\n  nummaxdevices: -1\n",
            "conf.yaml: rule 1 (devicematch '^tty$'): field 'nummaxdevices' is -1, "
            "must be between 1 and 1000",
        ),
        (
            "- devicematch: ^tty$\n  nummaxdevices: 0\n",
            "conf.yaml: rule 1 (devicematch '^tty$'): field 'nummaxdevices' is 0, "
            "must be between 1 and 1000",
        ),
        (
            "- devicematch: ^tty$\n  nummaxdevices: 1001\n",
            "conf.yaml: rule 1 (devicematch '^tty$'): field 'nummaxdevices' is 1001, "
            "must be between 1 and 1000",
        ),
        (
            "- devicematch: ^tty$\n  nummaxdevices: 2.5\n",
            "conf.yaml: rule 1 (devicematch '^tty$'): field 'nummaxdevices' must be a whole "
            "number, found 2.5",
        ),
        (
            "- devicematch: ^tty$\n  nummaxdevices: 'ten'\n",
            "conf.yaml: rule 1 (devicematch '^tty$'): field 'nummaxdevices' must be a whole "
            "number, found 'ten'",
        ),
        (
            "- devicematch: ^tty$\n  nummaxdevices: true\n",
            "conf.yaml: rule 1 (devicematch '^tty$'): field 'nummaxdevices' must be a whole "
            "number, found True",
        ),
    ],
    ids=[
        "not-a-list",
        "empty-file",
        "bad-yaml",
        "rule-not-a-mapping",
        "unknown-key",
        "missing-count",
        "missing-match",
        "match-not-a-string",
        "empty-match",
        "bad-regex",
        "negative-count",
        "zero-count",
        "huge-count",
        "fractional-count",
        "string-count",
        "boolean-count",
    ],
)
def test_each_bad_rule_is_refused_naming_rule_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        rules(text)
    assert caught.value.message.startswith(message), caught.value.message


def test_unreadable_rules_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "conf.yaml"
    with pytest.raises(ConfigError, match=f"cannot read rules file {missing}"):
        load_rules(missing)


def _tree(*entries: tuple[str, str] | tuple[str, str, str | None]) -> list[DevEntry]:
    return [DevEntry(*entry) for entry in entries]


def test_device_nodes_matching_a_rule_become_resources_with_that_many_ids() -> None:
    tree = _tree(("ttyUSB0", "char"), ("ttyUSB1", "char"), ("ttyS0", "char"), ("null", "char"))
    found = match_devices(rules("- devicematch: ^ttyUSB[0-9]*$\n  nummaxdevices: 3\n"), tree)
    assert [(r.name, r.ids) for r in found] == [
        ("smarter-devices/ttyUSB0", ("ttyUSB0-0", "ttyUSB0-1", "ttyUSB0-2")),
        ("smarter-devices/ttyUSB1", ("ttyUSB1-0", "ttyUSB1-1", "ttyUSB1-2")),
    ]
    assert found[0].nodes == (NodeSpec("ttyUSB0", "ttyUSB0"),)


def test_a_matched_directory_hands_over_every_device_node_below_it() -> None:
    tree = _tree(
        ("snd", "dir"),
        ("snd/controlC0", "char"),
        ("snd/pcmC0D0p", "char"),
        ("snd/by-path", "dir"),
        ("snd/by-path/platform-soc", "link", "snd/controlC0"),
        ("snd/seq", "char"),
    )
    (snd,) = match_devices(rules("- devicematch: ^snd$\n  nummaxdevices: 20\n"), tree)
    assert snd.name == "smarter-devices/snd"
    assert len(snd.ids) == 20
    assert [node.container_path for node in snd.nodes] == [
        "snd/controlC0",
        "snd/pcmC0D0p",
        "snd/seq",
    ]


def test_paths_in_subdirectories_are_matched_and_named_with_underscores() -> None:
    tree = _tree(
        ("bus", "dir"),
        ("bus/usb", "dir"),
        ("bus/usb/001", "dir"),
        ("bus/usb/001/002", "char"),
    )
    (found,) = match_devices(rules("- devicematch: ^bus/usb/001/002$\n  nummaxdevices: 1\n"), tree)
    assert found.name == "smarter-devices/bus_usb_001_002"
    assert found.nodes == (NodeSpec("bus/usb/001/002", "bus/usb/001/002"),)


def test_the_regex_is_searched_not_anchored_like_the_original() -> None:
    tree = _tree(("video0", "char"), ("v4l", "dir"), ("v4l/video-index0", "link", "video0"))
    found = match_devices(rules("- devicematch: video\n  nummaxdevices: 1\n"), tree)
    assert [r.name for r in found] == ["smarter-devices/v4l_video-index0", "smarter-devices/video0"]
    assert found[0].nodes == (NodeSpec("v4l/video-index0", "video0"),)


def test_the_originals_own_default_rules_are_read_as_it_reads_them() -> None:
    original = load_rules(ORIGINAL_RULES)
    assert [(r.devicematch, r.nummaxdevices) for r in original][:3] == [
        ("^snd$", 20),
        ("^gpiomem$", 40),
        ("^gpiochip[0-9]*$", 20),
    ]
    assert len(original) == 14
    raspberry_pi = _tree(
        ("snd", "dir"),
        ("snd/controlC0", "char"),
        ("gpiomem", "char"),
        ("gpiochip0", "char"),
        ("i2c-1", "char"),
        ("rtc0", "char"),
        ("video10", "char"),
        ("vchiq", "char"),
        ("vcsm-cma", "char"),
        ("ttyUSB0", "char"),
        ("ttyACM0", "char"),
        ("ttyS0", "char"),
        ("ttyAMA0", "char"),
        ("null", "char"),
    )
    found = {r.short_name: r.shares for r in match_devices(original, raspberry_pi)}
    assert found == {
        "snd": 20,
        "gpiomem": 40,
        "gpiochip0": 20,
        "i2c-1": 1,
        "rtc0": 20,
        "video10": 20,
        "vchiq": 20,
        "vcsm-cma": 20,
        "ttyUSB0": 1,
        "ttyACM0": 1,
        "ttyS0": 1,
    }


@pytest.mark.parametrize(
    "devicematch",
    [
        r"^ttyUSB[[:digit:]]+$",  # POSIX class in brackets: Python's re reads a nested set
        r"^ttyUSB\pN+\z",  # one-letter Unicode class and end of text: Python's re refuses both
        r"^ttyUSB\p{Nd}$",
        r"^\QttyUSB\E[0-9]$",  # quoted literal text
        r"(?i)^TTYusb[0-9]$",
    ],
)
def test_rules_in_re2_syntax_match_as_in_the_original(devicematch: str) -> None:
    tree = _tree(("ttyUSB0", "char"), ("ttyUSBx", "char"), ("ttyUSB", "char"), ("ttyACM0", "char"))
    found = match_devices(rules(f"- devicematch: '{devicematch}'\n  nummaxdevices: 1\n"), tree)
    assert [r.entry for r in found] == ["ttyUSB0"]


@pytest.mark.parametrize(
    ("devicematch", "reason"),
    [
        (r"^tty(?=USB)", "invalid perl operator: (?="),
        (r"(?<=tty)USB0", "invalid perl operator: (?<="),
        (r"^(tty)\1$", "invalid escape sequence: \\1"),
        (r"^ttyUSB0\Z", "invalid escape sequence: \\Z"),
        (r"^ttyUSB[0-9]++$", "bad repetition operator: ++"),
        (r"^(?>tty)USB", "invalid perl operator: (?>"),
    ],
    ids=["lookahead", "lookbehind", "backreference", "python-end-of-text", "possessive", "atomic"],
)
def test_python_only_constructs_are_refused_naming_the_rule_and_re2s_reason(
    devicematch: str, reason: str
) -> None:
    text = (
        "- devicematch: ^snd$\n  nummaxdevices: 1\n"
        f"- devicematch: '{devicematch}'\n  nummaxdevices: 1\n"
    )
    with pytest.raises(ConfigError) as caught:
        rules(text)
    assert caught.value.message == (
        f"conf.yaml: rule 2 (devicematch {devicematch!r}): field 'devicematch' is not a valid "
        f"RE2 regular expression: {reason}"
    )
    assert caught.value.hint is not None and "RE2 syntax" in caught.value.hint


def test_a_pattern_re2_cannot_read_as_text_is_refused_naming_the_rule() -> None:
    with pytest.raises(ConfigError) as caught:
        rules('- devicematch: "^tty\\ud800$"\n  nummaxdevices: 1\n')
    assert caught.value.message == (
        "conf.yaml: rule 1 (devicematch '^tty\\ud800$'): field 'devicematch' holds '\\ud800', "
        "which is not text RE2 can read (a lone surrogate)"
    )


def test_the_first_matching_rule_decides_the_share_count() -> None:
    tree = _tree(("ttyUSB0", "char"))
    (found,) = match_devices(
        rules(
            "- devicematch: ^ttyUSB0$\n  nummaxdevices: 2\n"
            "- devicematch: ^tty\n  nummaxdevices: 5\n"
        ),
        tree,
    )
    assert (found.rule, found.shares) == (1, 2)


def test_a_symlink_resolving_outside_dev_is_rejected_and_reported() -> None:
    tree = _tree(("fd", "link", None), ("stdin", "link", None), ("ttyUSB0", "char"))
    rejected: list[Rejection] = []
    found = match_devices(
        rules(
            "- devicematch: ^ttyUSB0$\n  nummaxdevices: 1\n"
            "- devicematch: ^(fd|stdin)$\n  nummaxdevices: 1\n"
        ),
        tree,
        rejected,
    )
    assert [r.name for r in found] == ["smarter-devices/ttyUSB0"]
    assert rejected == [
        Rejection(2, "^(fd|stdin)$", "fd", "symlink resolves outside /dev"),
        Rejection(2, "^(fd|stdin)$", "stdin", "symlink resolves outside /dev"),
    ]


def test_a_symlink_to_a_directory_hands_over_its_nodes_under_the_link_name() -> None:
    tree = _tree(("snd", "dir"), ("snd/controlC0", "char"), ("sound", "link", "snd"))
    (found,) = match_devices(rules("- devicematch: ^sound$\n  nummaxdevices: 1\n"), tree)
    assert found.nodes == (NodeSpec("sound/controlC0", "snd/controlC0"),)


def test_entries_without_device_nodes_are_not_resources() -> None:
    tree = _tree(("shm", "dir"), ("shm/file", "other"), ("log", "other"), ("empty", "dir"))
    found = match_devices(rules("- devicematch: ^(shm|log|empty)$\n  nummaxdevices: 1\n"), tree)
    assert found == []


def test_names_a_resource_cannot_hold_are_replaced_or_rejected() -> None:
    assert resource_short_name("disk/by-path/pci-0000:00:1f.2") == "disk_by-path_pci-0000_00_1f.2"
    assert resource_short_name("x" * 64) is None
    assert resource_short_name("-weird") is None
    tree = _tree(("a:b", "char"), ("a_b", "char"))
    rejected: list[Rejection] = []
    found = match_devices(rules("- devicematch: ^a.b$\n  nummaxdevices: 1\n"), tree, rejected)
    assert [r.entry for r in found] == ["a:b"]
    assert rejected == [Rejection(1, "^a.b$", "a_b", "resource name 'a_b' is already taken")]


def test_the_deployed_default_rules_are_valid_and_grant_the_example_serial_port() -> None:
    import yaml

    config_map = yaml.safe_load(DEPLOYED_RULES.read_text())
    deployed = parse_rules(config_map["data"]["conf.yaml"], source=str(DEPLOYED_RULES))
    tree = _tree(("ttyUSB0", "char"), ("ttyAMA0", "char"), ("null", "char"), ("mem", "char"))
    found = {r.name: r for r in match_devices(deployed, tree)}
    assert set(found) == {"smarter-devices/ttyUSB0", "smarter-devices/ttyAMA0"}
    assert found["smarter-devices/ttyUSB0"].shares == 1


def test_device_ids_never_exceed_63_characters_and_stay_distinct() -> None:
    longest = "x" * 63  # the longest resource name a path may give
    for shares in (1, 10, 1000):
        ids = device_ids(longest, shares)
        assert max(len(device_id) for device_id in ids) <= MAX_DEVICE_ID
        assert len(set(ids)) == shares
    other = device_ids("x" * 62 + "y", 1000)
    assert set(other).isdisjoint(device_ids(longest, 1000))
    # Short names keep the original's plain `<name>-<n>`.
    assert device_ids("ttyUSB0", 2) == ("ttyUSB0-0", "ttyUSB0-1")
    assert device_ids("y" * 61, 10)[0] == "y" * 61 + "-0"


def test_a_long_matched_path_gets_valid_ids_the_preferred_allocation_can_group() -> None:
    path = "serial/by-id/usb-FTDI_FT232R_USB_UART_A10KZ9Q1-if00-port0-extra"
    (found,) = match_devices(
        rules("- devicematch: ^serial/by-id/\n  nummaxdevices: 20\n"),
        _tree((path, "char")),
    )
    assert len(found.short_name) == 63
    assert all(len(device_id) <= MAX_DEVICE_ID for device_id in found.ids)
    assert preferred_allocation(found.ids, [], 2) == [found.ids[0], found.ids[1]]
