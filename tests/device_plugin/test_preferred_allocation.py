"""GetPreferredAllocation's choice: must-include IDs first, then shares spread over devices."""

from __future__ import annotations

from device_plugin.server import preferred_allocation


def test_must_include_ids_come_first_and_count_towards_the_size() -> None:
    available = ["cam-0", "cam-1", "cam-2", "cam-3"]
    assert preferred_allocation(available, ["cam-2"], 2) == ["cam-2", "cam-0"]


def test_one_device_gives_its_lowest_free_shares_in_order() -> None:
    assert preferred_allocation(["snd-7", "snd-3", "snd-12"], [], 2) == ["snd-3", "snd-7"]


def test_a_request_spreads_over_devices_before_taking_a_second_share_of_one() -> None:
    available = ["a-0", "a-1", "a-2", "b-0", "b-1", "b-2"]
    assert preferred_allocation(available, [], 4) == ["a-0", "b-0", "a-1", "b-1"]


def test_the_device_with_most_free_shares_is_preferred_to_keep_load_even() -> None:
    # a has one share left, b three: the next container lands on b.
    available = ["a-2", "b-0", "b-1", "b-2"]
    assert preferred_allocation(available, [], 1) == ["b-0"]
    assert preferred_allocation(available, [], 2) == ["b-0", "a-2"]


def test_must_include_shares_count_when_spreading() -> None:
    available = ["a-0", "a-1", "b-0", "b-1"]
    assert preferred_allocation(available, ["a-1"], 2) == ["a-1", "b-0"]


def test_never_more_than_available_nor_than_the_size() -> None:
    assert preferred_allocation(["x-0"], [], 3) == ["x-0"]
    assert preferred_allocation(["x-0", "x-1"], [], 0) == []


def test_ids_without_a_share_number_are_devices_of_their_own() -> None:
    assert preferred_allocation(["remoteproc1", "remoteproc0"], [], 1) == ["remoteproc0"]
