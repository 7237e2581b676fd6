"""What Allocate answers for IDs the resource does not advertise: the text a pod's event shows."""

from __future__ import annotations

from device_plugin.server import unknown_ids_message


def test_the_refusal_names_the_unknown_ids_what_is_advertised_and_what_to_do() -> None:
    assert unknown_ids_message(
        "smarter-devices/snd", ["snd-25"], [f"snd-{i}" for i in range(20)]
    ) == (
        "smarter-devices/snd: unknown device IDs snd-25; this node advertises snd-0..snd-19 (20). "
        "The kubelet chose from an older device list (changed rules?): recreate the pod"
    )


def test_a_long_list_of_unknown_ids_is_cut_to_five() -> None:
    unknown = [f"video0-{i}" for i in range(10, 17)]
    message = unknown_ids_message("smarter-devices/video0", unknown, ["video0-0", "video0-1"])
    assert message.startswith(
        "smarter-devices/video0: unknown device IDs video0-10, video0-11, video0-12, video0-13, "
        "video0-14, ... (7 in all); this node advertises video0-0, video0-1. "
    )
