"""A resource whose node vanishes and returns, again and again, leaves nothing behind.

Each event makes the resource Unhealthy or Healthy again, and the kubelet's open ListAndWatch
stream hears of it; the same server, stream and plugin serve every event. The daemon's growth
over 1,000 events (bench/bench_device_plugin.py) is one step of glibc's heap early on, then flat
over 3,000: this test keeps it that way by counting the Python objects alive between two counts
of events, which the allocator's behaviour does not move.
"""

from __future__ import annotations

import asyncio
import gc

from device_plugin.server import Plugins
from device_plugin.sources import Offer
from testbed.kubelet import Kubelet
from tests.device_plugin.conftest import HostTree

RESOURCE = "smarter-devices/ttyUSB0"
WARM_UP, COUNTED = 40, 200
# Per event, after a collection: a leak of one stream, waiter or message per event shows as
# hundreds; measured 0 here.
LIMIT_OBJECTS = 40


def _objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def test_node_vanishing_and_returning_leaves_no_objects_behind(
    host: HostTree, kubelet: Kubelet
) -> None:
    offer = Offer(resource=RESOURCE, ids=("ttyUSB0",))

    async def main() -> tuple[int, int]:
        plugins = Plugins(host.plugin_dir)
        try:
            await plugins.apply("dev", [offer])
            await asyncio.to_thread(kubelet.wait_devices, RESOURCE, bool, 30)
            updates = kubelet.updates(RESOURCE)
            while not updates.empty():
                updates.get_nowait()

            async def events(count: int) -> None:
                for event in range(count):
                    await plugins.apply("dev", [] if event % 2 == 0 else [offer])
                    await asyncio.to_thread(updates.get, True, 10)

            await events(WARM_UP)
            before = _objects()
            await events(COUNTED)
            return before, _objects()
        finally:
            await plugins.close()

    before, after = asyncio.run(main())
    assert after - before <= LIMIT_OBJECTS, (before, after)
