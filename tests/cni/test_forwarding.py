"""IPv4 forwarding: the bridge needs it; a read-only /proc/sys (a container's) is a CNI error."""

from __future__ import annotations

import json
import sys

import pytest

from testbed.netns import in_netns, network_namespace

pytestmark = pytest.mark.netns

_PROBE = """
import json
from cni import netlink
from cni.errors import CniError
try:
    netlink._enable_forwarding()
except CniError as error:
    print(json.dumps({"code": error.code, "msg": error.msg, "hint": error.hint}))
else:
    print(json.dumps({"forwarding": open("/proc/sys/net/ipv4/ip_forward").read().strip()}))
"""


def _probe(netns: str, *, read_only_proc_sys: bool) -> dict[str, object]:
    lock = "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
    script = f"{lock if read_only_proc_sys else ''}exec {sys.executable} -c '{_PROBE}'"
    result = in_netns(netns, "unshare", "--mount", "sh", "-c", script)
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def test_forwarding_is_turned_on_in_the_nodes_netns() -> None:
    with network_namespace() as netns:
        assert _probe(netns, read_only_proc_sys=False) == {"forwarding": "1"}


def test_forwarding_off_under_a_read_only_proc_sys_is_a_cni_error_with_the_fix() -> None:
    with network_namespace() as netns:
        answer = _probe(netns, read_only_proc_sys=True)
    assert answer["code"] == 101
    assert answer["msg"] == "IPv4 forwarding is off on this node and cannot be turned on from here"
    assert "sysctl -w net.ipv4.ip_forward=1" in str(answer["hint"])
