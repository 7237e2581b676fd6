"""The kubelet stand-in itself behaves as the kubelet does where the daemon's tests rely on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from device_plugin.api import v1beta1_pb2 as api
from device_plugin.api import v1beta1_pb2_grpc as api_grpc
from testbed.kubelet import Kubelet
from tests.device_plugin.conftest import HostTree


class _Plugin(api_grpc.DevicePluginServicer):
    """A plugin whose GetDevicePluginOptions fails or answers, as told."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.asked = 0

    def GetDevicePluginOptions(  # noqa: N802
        self, request: api.Empty, context: grpc.ServicerContext
    ) -> api.DevicePluginOptions:
        self.asked += 1
        if self.fail:
            context.abort(grpc.StatusCode.INTERNAL, "options are broken")
        return api.DevicePluginOptions(pre_start_required=True)

    def ListAndWatch(  # noqa: N802
        self, request: api.Empty, context: grpc.ServicerContext
    ) -> Iterator[api.ListAndWatchResponse]:
        yield api.ListAndWatchResponse(devices=[api.Device(ID="x-0", health="Healthy")])


def _serve(plugin: _Plugin, socket: Path) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    cast(Callable[[Any, Any], None], api_grpc.add_DevicePluginServicer_to_server)(plugin, server)
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    return server


def _register(kubelet: Kubelet, endpoint: str) -> None:
    with grpc.insecure_channel(f"unix://{kubelet.socket}") as channel:
        stub: Any = cast(Callable[[Any], Any], api_grpc.RegistrationStub)(channel)
        stub.Register(
            api.RegisterRequest(
                version="v1beta1", endpoint=endpoint, resource_name="example.com/x"
            ),
            timeout=10,
        )


@pytest.mark.parametrize("fail", [False, True])
def test_register_asks_the_plugin_for_its_options_and_refuses_when_that_fails(
    host: HostTree, kubelet: Kubelet, fail: bool
) -> None:
    plugin = _Plugin(fail)
    server = _serve(plugin, host.plugin_dir / "x.sock")
    try:
        if fail:
            with pytest.raises(grpc.RpcError) as refused:
                _register(kubelet, "x.sock")
            assert refused.value.code() == grpc.StatusCode.UNKNOWN
            assert refused.value.details() == (
                "failed to get device plugin options: INTERNAL: options are broken"
            )
            assert kubelet.registered() == {}
            assert [problem for _, problem in kubelet.refused] == [refused.value.details()]
        else:
            _register(kubelet, "x.sock")
            assert kubelet.options("example.com/x").pre_start_required
        assert plugin.asked == 1  # during Register, before it was answered
    finally:
        server.stop(grace=None)
