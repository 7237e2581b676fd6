"""Address leases: the pure choice, and the files that hold them across processes."""

from __future__ import annotations

import ipaddress
import multiprocessing
from pathlib import Path

import pytest

from cni.errors import CniError
from cni.ipam import LeaseStore, choose_address


def test_choice_continues_after_the_last_address_handed_out() -> None:
    assert choose_address(10, 20, taken=set(), after=None) == 10
    assert choose_address(10, 20, taken={10, 11}, after=None) == 12
    assert choose_address(10, 20, taken=set(), after=14) == 15
    assert choose_address(10, 20, taken={20}, after=19) == 10  # wraps
    assert choose_address(10, 12, taken={10, 11, 12}, after=11) is None


def _store(path: Path, last: str = "10.9.0.6") -> LeaseStore:
    gateway = ipaddress.IPv4Address("10.9.0.1")
    return LeaseStore(path, gateway, ipaddress.IPv4Address(last), reserved=[gateway])


def test_a_lease_is_a_file_named_after_its_address(tmp_path: Path) -> None:
    store = _store(tmp_path)
    address = store.acquire("c1", "eth0")
    assert str(address) == "10.9.0.2"
    assert (tmp_path / "10.9.0.2").read_text() == "c1\neth0\n"
    assert store.acquire("c1", "eth0") == address  # the same attachment keeps its address
    assert str(store.acquire("c1", "net1")) == "10.9.0.3"


def test_release_frees_only_that_attachment(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.acquire("c1", "eth0")
    kept = store.acquire("c2", "eth0")
    assert [str(a) for a in store.release("c1", "eth0")] == ["10.9.0.2"]
    assert store.release("c1", "eth0") == []
    assert [lease.address for lease in store.leases()] == [kept]


def test_exhausted_range_is_refused_and_names_the_range(tmp_path: Path) -> None:
    store = _store(tmp_path, last="10.9.0.3")
    store.acquire("c1", "eth0")
    store.acquire("c2", "eth0")
    with pytest.raises(CniError) as caught:
        store.acquire("c3", "eth0")
    assert caught.value.code == 100
    assert "10.9.0.1 to 10.9.0.3" in caught.value.details


def test_a_lease_left_empty_by_a_crash_still_reserves_its_address(tmp_path: Path) -> None:
    (tmp_path / "10.9.0.2").write_text("")
    assert str(_store(tmp_path).acquire("c1", "eth0")) == "10.9.0.3"


def test_gc_keeps_only_valid_attachments(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for container in ("keep", "drop1", "drop2"):
        store.acquire(container, "eth0")
    removed = store.release_all_but({("keep", "eth0")})
    assert sorted(lease.container_id for lease in removed) == ["drop1", "drop2"]
    assert [lease.container_id for lease in store.leases()] == ["keep"]


def _acquire_many(directory: str, prefix: str, queue: multiprocessing.Queue[str]) -> None:
    gateway = ipaddress.IPv4Address("10.9.0.1")
    store = LeaseStore(Path(directory), gateway, ipaddress.IPv4Address("10.9.0.254"), [gateway])
    for n in range(10):
        queue.put(str(store.acquire(f"{prefix}-{n}", "eth0")))


def test_processes_racing_for_leases_never_share_an_address(tmp_path: Path) -> None:
    queue: multiprocessing.Queue[str] = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=_acquire_many, args=(str(tmp_path), f"p{i}", queue))
        for i in range(6)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    addresses = [queue.get(timeout=5) for _ in range(60)]
    assert len(set(addresses)) == 60
    assert len(list(p for p in tmp_path.iterdir() if not p.name.startswith("."))) == 60


def test_exhausted_range_counts_only_leasable_addresses(tmp_path: Path) -> None:
    store = _store(tmp_path)  # 10.9.0.1-6, the gateway 10.9.0.1 among them
    assert store.leasable == 5
    for index in range(5):
        store.acquire(f"c{index}", "eth0")
    with pytest.raises(CniError) as caught:
        store.acquire("one-too-many", "eth0")
    assert caught.value.code == 100
    assert caught.value.details == (
        "all 5 leasable addresses from 10.9.0.1 to 10.9.0.6 are leased"
        " (10.9.0.1 reserved: the gateway)"
    )
