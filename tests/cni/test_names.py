"""Which names a pod gets in DNS."""

from __future__ import annotations

import pytest

from cni.dns_records import Record, names_for, parse, render
from cni.names import app_name, is_dns_label, is_dns_subdomain


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


def test_names_that_are_not_labels_get_no_record() -> None:
    assert names_for("my.pod", "default", claimed=set()) == []
    assert names_for("ok", "Bad_NS", claimed=set()) == []


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
