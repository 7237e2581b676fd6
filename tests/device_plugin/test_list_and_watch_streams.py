"""ListAndWatch streams of one resource's server, held open by real gRPC clients on its socket:
a burst of changes is one update with the latest list, a stop ends every stream, and a kubelet
that hangs up leaves the others watching."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import grpc.aio

from device_plugin.api import v1beta1_pb2 as api
from device_plugin.api import v1beta1_pb2_grpc as api_grpc
from device_plugin.server import HEALTHY, UNHEALTHY, ResourcePlugin
from device_plugin.sources import Offer
from tests.device_plugin.conftest import HostTree

RESOURCE = "smarter-devices/snd"
# Long enough for a stray extra update to arrive over a unix socket on a loaded machine.
QUIET_S = 0.5
WAIT_S = 10.0

Lists = list[list[tuple[str, str]]]


def _offer(*ids: str) -> Offer:
    return Offer(RESOURCE, ids)


def _run(host: HostTree, scenario: Callable[[ResourcePlugin, Any], Awaitable[None]]) -> None:
    """Serve the resource under `host`, run `scenario(plugin, stub)`, then stop it all."""

    async def main() -> None:
        host.plugin_dir.mkdir(parents=True, exist_ok=True)
        plugin = ResourcePlugin(_offer("snd-0"), "dev", host.plugin_dir)
        await plugin.serve()
        try:
            async with grpc.aio.insecure_channel(f"unix://{plugin.socket}") as channel:
                stub = cast(Callable[[Any], Any], api_grpc.DevicePluginStub)(channel)
                await scenario(plugin, stub)
        finally:
            await plugin.shutdown()

    asyncio.run(main())


def _lists(call: AsyncIterator[api.ListAndWatchResponse]) -> tuple[Lists, asyncio.Task[None]]:
    """Collect each list the stream sends, as (ID, health) pairs, until it ends."""
    received: Lists = []

    async def collect() -> None:
        async for response in call:
            received.append([(device.ID, device.health) for device in response.devices])

    return received, asyncio.ensure_future(collect())


async def _until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


def test_a_burst_of_changes_reaches_the_kubelet_as_one_update_with_the_latest_list(
    host: HostTree,
) -> None:
    async def scenario(plugin: ResourcePlugin, stub: Any) -> None:
        received, collecting = _lists(stub.ListAndWatch(api.Empty()))
        await _until(lambda: len(received) == 1, "the first list")
        # Three changes with no await between them: the stream cannot send before the last.
        plugin.update(_offer("snd-0", "snd-1"))
        plugin.update(None)
        plugin.update(_offer("snd-0", "snd-1", "snd-2"))
        await _until(lambda: len(received) == 2, "an update")
        await asyncio.sleep(QUIET_S)
        collecting.cancel()
        assert received == [
            [("snd-0", HEALTHY)],
            [("snd-0", HEALTHY), ("snd-1", HEALTHY), ("snd-2", HEALTHY)],
        ]

    _run(host, scenario)


def test_an_unchanged_view_sends_no_update(host: HostTree) -> None:
    async def scenario(plugin: ResourcePlugin, stub: Any) -> None:
        received, collecting = _lists(stub.ListAndWatch(api.Empty()))
        await _until(lambda: len(received) == 1, "the first list")
        plugin.update(_offer("snd-0"))
        await asyncio.sleep(QUIET_S)
        plugin.update(None)
        await _until(lambda: len(received) == 2, "the unhealthy list")
        collecting.cancel()
        assert received == [[("snd-0", HEALTHY)], [("snd-0", UNHEALTHY)]]

    _run(host, scenario)


def test_stopping_the_server_ends_every_open_stream(host: HostTree) -> None:
    async def scenario(plugin: ResourcePlugin, stub: Any) -> None:
        streams = [_lists(stub.ListAndWatch(api.Empty())) for _ in range(2)]
        await _until(lambda: all(len(got) == 1 for got, _ in streams), "both first lists")
        await plugin.shutdown()
        async with asyncio.timeout(WAIT_S):
            for _, collecting in streams:
                # Ended by the stop's grace period rather than by the stream is ended too.
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await collecting
        assert not plugin.serving
        assert not Path(plugin.socket).exists()

    _run(host, scenario)


def test_a_kubelet_that_hangs_up_leaves_the_other_streams_watching(host: HostTree) -> None:
    async def scenario(plugin: ResourcePlugin, stub: Any) -> None:
        leaving = stub.ListAndWatch(api.Empty())
        left, leaving_task = _lists(leaving)
        staying, staying_task = _lists(stub.ListAndWatch(api.Empty()))
        await _until(lambda: len(left) == 1 and len(staying) == 1, "both first lists")
        leaving.cancel()
        leaving_task.cancel()
        await asyncio.sleep(QUIET_S)  # the server sees the hang-up and ends that stream
        plugin.update(_offer("snd-0", "snd-1"))
        await _until(lambda: len(staying) == 2, "the update on the stream that stayed")
        staying_task.cancel()
        assert staying[1] == [("snd-0", HEALTHY), ("snd-1", HEALTHY)]

    _run(host, scenario)
