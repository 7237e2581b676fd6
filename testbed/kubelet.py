"""A kubelet stand-in that speaks the device plugin API v1beta1 both ways, for tests.

Like the kubelet's device manager it serves `Registration` on `<plugin dir>/kubelet.sock`,
validates each RegisterRequest, dials the plugin's endpoint (a socket name in the same
directory) and asks it GetDevicePluginOptions before answering (an error there refuses the
registration, as the kubelet's `PluginConnected` does), then consumes its ListAndWatch stream.
`restart()` does what a kubelet restart does to the directory: every socket in it is deleted,
then kubelet.sock is created anew.

    with kubelet.start(plugin_dir) as k:
        k.wait_registered(["smarter-devices/ttyUSB0"])
        devices = k.wait_devices("smarter-devices/ttyUSB0", lambda ds: len(ds) == 1)
        response = k.allocate("smarter-devices/ttyUSB0", ["ttyUSB0-0"])
"""

from __future__ import annotations

import queue
import re
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import grpc

from device_plugin.api import v1beta1_pb2 as api
from device_plugin.api import v1beta1_pb2_grpc as api_grpc
from smarter_common.deadline import Deadline

SUPPORTED_VERSIONS = ("v1beta1",)
KUBELET_SOCKET = "kubelet.sock"
DIAL_TIMEOUT_S = 5.0
# An extended resource name: a DNS subdomain prefix, then a qualified name (not kubernetes.io).
_RESOURCE_NAME = re.compile(
    r"^(?P<domain>[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/"
    r"(?P<name>[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$"
)

Devices = list[api.Device]


class PluginConnection:
    """A client of one plugin endpoint, as the kubelet holds it."""

    def __init__(self, socket: Path, timeout: float = DIAL_TIMEOUT_S) -> None:
        self.socket = socket
        self._channel = grpc.insecure_channel(f"unix://{socket}")
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise ConnectionError(f"no device plugin answers on {socket}") from None
        self._stub: Any = cast(Callable[[Any], Any], api_grpc.DevicePluginStub)(self._channel)
        self._watches: list[Any] = []

    def options(self, timeout: float = DIAL_TIMEOUT_S) -> api.DevicePluginOptions:
        return cast(
            api.DevicePluginOptions,
            self._stub.GetDevicePluginOptions(api.Empty(), timeout=timeout),
        )

    def watch(
        self, updates: queue.Queue[Devices | None] | None = None
    ) -> queue.Queue[Devices | None]:
        """Stream ListAndWatch into a queue: each item a full device list; None when it ends."""
        into: queue.Queue[Devices | None] = updates if updates is not None else queue.Queue()
        call = self._stub.ListAndWatch(api.Empty())
        self._watches.append(call)

        def pump() -> None:
            try:
                for response in call:
                    into.put(list(response.devices))
            except grpc.RpcError:
                pass
            into.put(None)

        threading.Thread(target=pump, name=f"watch-{self.socket.name}", daemon=True).start()
        return into

    def allocate(self, ids: Sequence[str], *more: Sequence[str]) -> api.AllocateResponse:
        """Allocate `ids` for one container (and `more` for further containers of the pod)."""
        request = api.AllocateRequest(
            container_requests=[
                api.ContainerAllocateRequest(devices_ids=list(group)) for group in (ids, *more)
            ]
        )
        return cast(api.AllocateResponse, self._stub.Allocate(request, timeout=DIAL_TIMEOUT_S))

    def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        request = api.PreferredAllocationRequest(
            container_requests=[
                api.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available),
                    must_include_deviceIDs=list(must_include),
                    allocation_size=size,
                )
            ]
        )
        response = self._stub.GetPreferredAllocation(request, timeout=DIAL_TIMEOUT_S)
        return list(response.container_responses[0].deviceIDs)

    def pre_start(self, ids: Sequence[str]) -> api.PreStartContainerResponse:
        return cast(
            api.PreStartContainerResponse,
            self._stub.PreStartContainer(api.PreStartContainerRequest(devices_ids=list(ids))),
        )

    def close(self) -> None:
        for call in self._watches:
            call.cancel()
        self._channel.close()


class _Endpoint:
    """A registered resource: its request, connection, the options the plugin answered at
    registration, and what ListAndWatch last said."""

    def __init__(
        self,
        request: api.RegisterRequest,
        connection: PluginConnection,
        options: api.DevicePluginOptions,
    ) -> None:
        self.request = request
        self.connection = connection
        self.options = options
        self.devices: Devices | None = None
        self.updates: queue.Queue[Devices | None] = queue.Queue()


class Kubelet:
    """The stand-in; see the module docstring."""

    def __init__(self, plugin_dir: Path, socket_name: str = KUBELET_SOCKET) -> None:
        self.plugin_dir = plugin_dir
        self.socket = plugin_dir / socket_name
        self.registrations: list[api.RegisterRequest] = []
        self.refused: list[tuple[api.RegisterRequest, str]] = []
        self._endpoints: dict[str, _Endpoint] = {}
        self._server: grpc.Server | None = None
        self._changed = threading.Condition()

    # lifecycle

    def start(self) -> Kubelet:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handler = grpc.method_handlers_generic_handler(
            "v1beta1.Registration",
            {
                "Register": grpc.unary_unary_rpc_method_handler(
                    self._register,
                    request_deserializer=api.RegisterRequest.FromString,
                    response_serializer=api.Empty.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None).wait()
        with self._changed:
            endpoints, self._endpoints = self._endpoints, {}
            self._changed.notify_all()
        for endpoint in endpoints.values():
            endpoint.connection.close()
        self.socket.unlink(missing_ok=True)

    def restart(self) -> None:
        """Stop, delete every socket in the plugin directory, serve kubelet.sock anew."""
        self.stop()
        for entry in self.plugin_dir.iterdir():
            try:
                if stat.S_ISSOCK(entry.lstat().st_mode):
                    entry.unlink()
            except FileNotFoundError:
                pass
        self.start()

    def __enter__(self) -> Kubelet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # the Registration service

    def _register(self, request: api.RegisterRequest, context: grpc.ServicerContext) -> api.Empty:
        with self._changed:
            self.registrations.append(request)
            self._changed.notify_all()
        problem = _validate(request)
        connection: PluginConnection | None = None
        options = api.DevicePluginOptions()
        if problem is None:
            try:
                connection = PluginConnection(self.plugin_dir / request.endpoint)
                # Synchronously, before answering, as the kubelet's PluginConnected does.
                options = connection.options()
            except ConnectionError as exc:
                problem = str(exc)
            except grpc.RpcError as exc:
                problem = f"failed to get device plugin options: {_details(exc)}"
        if problem is not None or connection is None:
            if connection is not None:
                connection.close()
            problem = problem or "no connection"
            with self._changed:
                self.refused.append((request, problem))
                self._changed.notify_all()
            # The kubelet answers with a plain Go error, which gRPC sends as UNKNOWN.
            context.abort(grpc.StatusCode.UNKNOWN, problem)
        endpoint = _Endpoint(request, connection, options)
        with self._changed:
            old = self._endpoints.get(request.resource_name)
            self._endpoints[request.resource_name] = endpoint
            self._changed.notify_all()
        if old is not None:
            old.connection.close()
        threading.Thread(
            target=self._consume,
            args=(endpoint,),
            name=f"kubelet-{request.resource_name}",
            daemon=True,
        ).start()
        return api.Empty()

    def _consume(self, endpoint: _Endpoint) -> None:
        updates = endpoint.connection.watch()
        while True:
            devices = updates.get()
            with self._changed:
                if devices is not None:
                    endpoint.devices = devices
                self._changed.notify_all()
            endpoint.updates.put(devices)
            if devices is None:
                return

    # what tests ask

    def registered(self) -> dict[str, api.RegisterRequest]:
        """The resources registered since the last (re)start."""
        with self._changed:
            return {name: e.request for name, e in self._endpoints.items()}

    def wait_registered(
        self, resources: Iterable[str], timeout: float = 10.0
    ) -> dict[str, api.RegisterRequest]:
        wanted = set(resources)
        self._wait(lambda: wanted <= set(self._endpoints), timeout, f"registration of {wanted}")
        return self.registered()

    def options(self, resource: str) -> api.DevicePluginOptions:
        """What the plugin of `resource` answered to GetDevicePluginOptions when it registered."""
        with self._changed:
            return self._endpoints[resource].options

    def devices(self, resource: str) -> Devices | None:
        with self._changed:
            endpoint = self._endpoints.get(resource)
            return None if endpoint is None else endpoint.devices

    def updates(self, resource: str) -> queue.Queue[Devices | None]:
        """Every ListAndWatch message of `resource` since it registered, in order."""
        with self._changed:
            return self._endpoints[resource].updates

    def wait_devices(
        self, resource: str, predicate: Callable[[Devices], bool], timeout: float = 10.0
    ) -> Devices:
        def done() -> bool:
            endpoint = self._endpoints.get(resource)
            return (
                endpoint is not None
                and endpoint.devices is not None
                and predicate(endpoint.devices)
            )

        self._wait(done, timeout, f"devices of {resource} matching the condition")
        devices = self.devices(resource)
        assert devices is not None
        return devices

    def connection(self, resource: str) -> PluginConnection:
        with self._changed:
            return self._endpoints[resource].connection

    def connect(self, endpoint: str) -> PluginConnection:
        """A new connection to a plugin endpoint (a socket name in the plugin directory)."""
        return PluginConnection(self.plugin_dir / endpoint)

    def allocate(self, resource: str, ids: Sequence[str]) -> api.AllocateResponse:
        return self.connection(resource).allocate(ids)

    def preferred(
        self, resource: str, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        return self.connection(resource).preferred(available, must_include, size)

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = Deadline(timeout)
        with self._changed:
            while not condition():
                left = deadline.remaining()
                if left <= 0:
                    raise TimeoutError(
                        f"kubelet stand-in: no {what} within {timeout} s; "
                        f"registered: {sorted(self._endpoints)}"
                    )
                self._changed.wait(left)


def _validate(request: api.RegisterRequest) -> str | None:
    """The kubelet's checks on a RegisterRequest, or None when it is acceptable."""
    if request.version not in SUPPORTED_VERSIONS:
        return f"unsupported device plugin API version {request.version!r}"
    match = _RESOURCE_NAME.match(request.resource_name)
    if match is None or match.group("domain").endswith("kubernetes.io"):
        return f"invalid extended resource name {request.resource_name!r}"
    if "/" in request.endpoint or not request.endpoint:
        return f"endpoint {request.endpoint!r} is not a socket name in the plugin directory"
    return None


def _details(error: grpc.RpcError) -> str:
    call = cast(grpc.Call, error)
    return f"{call.code().name}: {call.details()}"


def start(plugin_dir: Path, socket_name: str = KUBELET_SOCKET) -> Kubelet:
    """A running stand-in serving `<plugin_dir>/<socket_name>` (kubelet.sock)."""
    return Kubelet(plugin_dir, socket_name).start()
