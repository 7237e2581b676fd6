"""Who holds which name: app name claims, handovers and clashes, in the hosts files themselves."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from cni.dns_records import HostsDirectory, Record, heir

ADDRESS = ipaddress.IPv4Address("10.210.0.9")


@pytest.fixture
def hosts(tmp_path: Path) -> HostsDirectory:
    return HostsDirectory(tmp_path / "hosts", tmp_path / "dns.lock")


def _names(hosts: HostsDirectory, container_id: str) -> list[str]:
    """The names in the container's hosts file, read as dnsmasq reads it."""
    line = (hosts.path / container_id).read_text().splitlines()[1]
    return line.split()[1:]


def _add(hosts: HostsDirectory, container_id: str, pod: str, last_octet: int) -> None:
    address = ipaddress.IPv4Address(f"10.210.0.{last_octet}")
    assert hosts.register(container_id, "eth0", address, pod, "iot") is not None


def test_app_name_passes_to_the_oldest_remaining_pod_when_its_holder_is_deleted(
    hosts: HostsDirectory,
) -> None:
    _add(hosts, "c1", "sensor-7xk2p", 2)
    _add(hosts, "c2", "sensor-b2c4d", 3)
    _add(hosts, "c3", "sensor-x9z8w", 4)
    assert _names(hosts, "c1") == ["sensor-7xk2p", "sensor-7xk2p.iot", "sensor"]
    assert hosts.remove("c1")
    assert _names(hosts, "c2") == ["sensor-b2c4d", "sensor-b2c4d.iot", "sensor"]
    assert _names(hosts, "c3") == ["sensor-x9z8w", "sensor-x9z8w.iot"]
    assert hosts.remove("c2")
    assert _names(hosts, "c3") == ["sensor-x9z8w", "sensor-x9z8w.iot", "sensor"]


def test_oldest_is_by_registration_not_by_container_id_or_rewrites(
    hosts: HostsDirectory,
) -> None:
    _add(hosts, "zz-first", "sensor-7xk2p", 2)
    _add(hosts, "mm-second", "sensor-b2c4d", 3)
    _add(hosts, "aa-third", "sensor-x9z8w", 4)
    _add(hosts, "mm-second", "sensor-b2c4d", 3)  # ADD again: keeps its place in the queue
    assert hosts.remove("zz-first")
    assert "sensor" in _names(hosts, "mm-second")
    assert "sensor" not in _names(hosts, "aa-third")


def test_deleting_a_pod_without_the_app_name_hands_nothing_over(hosts: HostsDirectory) -> None:
    _add(hosts, "c1", "sensor-7xk2p", 2)
    _add(hosts, "c2", "sensor-b2c4d", 3)
    _add(hosts, "c3", "sensor-x9z8w", 4)
    assert hosts.remove("c2")
    assert _names(hosts, "c1")[-1] == "sensor"
    assert _names(hosts, "c3") == ["sensor-x9z8w", "sensor-x9z8w.iot"]


def test_app_name_that_is_another_pods_registered_name_is_not_registered(
    hosts: HostsDirectory,
) -> None:
    _add(hosts, "plain", "sensor", 2)  # a pod named just `sensor` (no controller suffix)
    _add(hosts, "c1", "sensor-7xk2p", 3)
    assert _names(hosts, "c1") == ["sensor-7xk2p", "sensor-7xk2p.iot"]
    assert _names(hosts, "plain") == ["sensor", "sensor.iot"]


def test_pod_named_like_an_app_takes_the_name_from_the_pod_holding_it(
    hosts: HostsDirectory,
) -> None:
    _add(hosts, "c1", "sensor-7xk2p", 2)
    _add(hosts, "plain", "sensor", 3)
    assert _names(hosts, "plain") == ["sensor", "sensor.iot"]
    assert _names(hosts, "c1") == ["sensor-7xk2p", "sensor-7xk2p.iot"]
    every_name = [name for r in hosts.records() for name in r.names]
    assert len(every_name) == len(set(every_name))
    # When the pod of that name goes, the app pod gets its app name back.
    assert hosts.remove("plain")
    assert _names(hosts, "c1") == ["sensor-7xk2p", "sensor-7xk2p.iot", "sensor"]


def test_removing_the_last_pod_of_an_app_leaves_no_file_behind(hosts: HostsDirectory) -> None:
    _add(hosts, "c1", "sensor-7xk2p", 2)
    assert hosts.remove("c1")
    assert hosts.records() == []
    assert sorted(p.name for p in hosts.path.iterdir()) == []
    assert not hosts.remove("c1")


def test_heir_is_none_while_someone_holds_the_name() -> None:
    holder = Record("a", "eth0", ADDRESS, ("sensor", "sensor.iot"), added=1)
    waiting = Record("b", "eth0", ADDRESS, ("sensor-7xk2p", "sensor-7xk2p.iot"), added=2)
    assert heir("sensor", [holder, waiting]) is None
    assert heir("sensor", [waiting]) == waiting
    assert heir("other", [waiting]) is None


def test_record_without_registration_time_is_as_old_as_its_file(hosts: HostsDirectory) -> None:
    hosts.path.mkdir(parents=True)
    path = hosts.path / "legacy"
    path.write_text("# smarter-cni container=legacy ifname=eth0\n10.210.0.5 a-7xk2p a\n")
    record = hosts.read("legacy")
    assert record is not None and record.added == path.stat().st_mtime_ns
