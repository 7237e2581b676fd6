"""Which names a pod gets in DNS."""

from __future__ import annotations

import pytest

from cni.dns_records import Record, names_for, parse, render
from cni.names import app_name, dns_safe_label, is_dns_label, is_dns_subdomain, name_danger


@pytest.mark.parametrize(
    ("pod", "app"),
    [
        ("sensor-7xk2p", "sensor"),  # DaemonSet
        ("web-5d4f8b7c9d-x7k2p", "web"),  # Deployment's ReplicaSet
        ("backup-28712345-bx9wq", "backup-28712345"),  # a CronJob's Job: the Job name
        ("migrate-db-tq5zm", "migrate-db"),  # Job
        ("db-0", None),  # StatefulSet keeps its ordinal
        ("standalone", None),
        ("camera-feed-ABCDE", None),
        ("x-aeiou", None),  # vowels are not in the generated alphabet
    ],
)
def test_app_name_strips_a_controllers_generated_suffix(pod: str, app: str | None) -> None:
    assert app_name(pod) == app


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("sensor", True),
        ("a", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("Sensor", False),
        ("-sensor", False),
        ("sensor-", False),
        ("my.pod", False),
        ("evil\nname", False),
        ("../x", False),
        ("", False),
    ],
)
def test_dns_label_follows_rfc_1123(name: str, label: bool) -> None:
    assert is_dns_label(name) is label


def test_dns_subdomain_allows_dots_but_not_paths() -> None:
    assert is_dns_subdomain("my.pod")
    assert not is_dns_subdomain("../etc")
    assert not is_dns_subdomain("a..b")


def test_pod_gets_its_name_namespaced_name_and_app() -> None:
    assert names_for("sensor-7xk2p", "iot", claimed=set()) == [
        "sensor-7xk2p",
        "sensor-7xk2p.iot",
        "sensor",
    ]


def test_app_name_claimed_by_another_pod_is_not_given_again() -> None:
    assert names_for("sensor-b2c4d", "iot", claimed={"sensor"}) == [
        "sensor-b2c4d",
        "sensor-b2c4d.iot",
    ]


def test_names_without_a_dns_safe_form_get_no_record() -> None:
    assert names_for("my.pod", "default", claimed=set()) == []
    assert names_for("ok", "bad.ns", claimed=set()) == []


def test_record_round_trips_through_its_hosts_file_text() -> None:
    import ipaddress

    address = ipaddress.IPv4Address("10.210.0.7")
    record = Record("abc123", "eth0", address, ("a-7xk2p", "a"), added=1700000000123456789)
    text = render(record)
    assert text == (
        "# smarter-cni container=abc123 ifname=eth0 added=1700000000123456789\n"
        "10.210.0.7 a-7xk2p a\n"
    )
    assert parse("abc123", text) == record
    # Records written before `added` existed still parse (their age is unknown: 0).
    old = "# smarter-cni container=abc123 ifname=eth0\n10.210.0.7 a-7xk2p a\n"
    assert parse("abc123", old) == Record("abc123", "eth0", address, ("a-7xk2p", "a"))
    assert parse("x", "10.0.0.1 someone-elses\n") is None


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("sensor-7xk2p", "sensor-7xk2p"),  # a Kubernetes pod name is its own
        ("focused_cray", "focused-cray"),  # podman's generated names
        ("Web_1", "web-1"),
        ("WEB", "web"),
        ("my.pod", None),  # a dot would make it two labels
        ("_web", None),  # still starts with a hyphen
        ("web_", None),
        ("with space", None),
        ("caf\u00e9", None),
        ("\u212aelvin", None),  # the Kelvin sign lower-cases to an ASCII k: not ours to fold
        ("a" * 64, None),
    ],
)
def test_dns_safe_label_is_the_one_obvious_form_or_none(name: str, label: str | None) -> None:
    assert dns_safe_label(name) == label


@pytest.mark.parametrize(
    ("name", "danger"),
    [
        ("focused_cray", None),
        ("Web_1", None),
        ("my.pod", None),
        ("x" * 253, None),
        ("x" * 254, "is 254 characters long, more than 253"),
        ("evil\nname", "holds a control character (a newline, tab, escape...)"),
        ("bell\x07", "holds a control character (a newline, tab, escape...)"),
        ("del\x7f", "holds a control character (a newline, tab, escape...)"),
        ("../etc/passwd", "holds '/'"),
        ("a..b", "holds '..'"),
    ],
)
def test_only_names_that_could_escape_a_file_path_or_log_line_are_dangerous(
    name: str, danger: str | None
) -> None:
    assert name_danger(name) == danger


def test_other_clients_names_are_registered_in_their_dns_safe_form() -> None:
    assert names_for("Web_1", "default", ()) == ["web-1", "web-1.default"]
    assert names_for("focused_cray", "Team_A", ()) == ["focused-cray", "focused-cray.team-a"]
    # No application name: a generated-looking suffix means nothing outside Kubernetes.
    assert names_for("Sensor_7xk2p", "default", ()) == ["sensor-7xk2p", "sensor-7xk2p.default"]


def test_a_dns_safe_form_another_pod_holds_is_ambiguous_and_not_registered() -> None:
    assert names_for("Web_1", "default", {"web-1", "web-1.default"}) == []
    assert names_for("my.pod", "default", ()) == []
