"""The plugin core: one device plugin gRPC server per resource, registered with the kubelet.

Follows the kubelet's device plugin API v1beta1: each resource is served on its own unix socket
in the plugin directory, then registered on `kubelet.sock` (the server must answer before the
kubelet dials back). ListAndWatch sends the full device list on connect and again on every
change. All servers share one asyncio loop, so an open ListAndWatch stream costs no thread, and
one small thread pool (used by gRPC only for handlers that are not coroutines: none today).
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio

from device_plugin.api import v1beta1_pb2 as api
from device_plugin.api import v1beta1_pb2_grpc as api_grpc
from device_plugin.sources import Offer
from smarter_common.logs import get_logger

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
REGISTER_TIMEOUT_S = 5.0
# The kubelet's socket file appears (bind) a moment before it accepts (listen): a Register sent
# on the inotify event can meet ECONNREFUSED. So the channel retries the connection quickly for
# this long, rather than failing and waiting for the daemon's periodic retry. Bounded, because
# a kubelet that died leaves its socket behind and nothing would ever answer.
KUBELET_READY_S = 2.0
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 250),
    ("grpc.enable_channelz", 0),
)
# No channelz bookkeeping: nothing reads it, and it costs a little memory per server.
_SERVER_OPTIONS = (("grpc.enable_channelz", 0),)
# sockaddr_un holds 108 bytes including the terminating NUL, but gRPC (1.85, measured) refuses
# to bind a path of 106 bytes or more (its message says "more than 107 characters").
_MAX_SOCKET_PATH = 105
_SLOT = re.compile(r"^(?P<device>.+)-(?P<slot>\d+)$")
# An Allocate refusal names this many unknown IDs at most (it ends up in a pod event).
_MAX_IDS_SHOWN = 5

_log = get_logger("smarter-device-manager")
# The generated gRPC module carries no type hints.
_add_generated = cast(Callable[[Any, Any], None], api_grpc.add_DevicePluginServicer_to_server)
_registration_stub = cast(Callable[[Any], Any], api_grpc.RegistrationStub)


def plugin_options() -> api.DevicePluginOptions:
    return api.DevicePluginOptions(
        pre_start_required=False, get_preferred_allocation_available=True
    )


def socket_name(plugin_dir: Path, short_name: str) -> str:
    """`smarter-<name>.sock`, shortened with a digest when the path would not fit a sockaddr."""
    name = f"smarter-{short_name}.sock"
    room = _MAX_SOCKET_PATH - len(str(plugin_dir)) - 1
    if len(name.encode()) <= room:
        return name
    digest = f"{zlib.crc32(short_name.encode()):08x}"
    keep = max(1, room - len("smarter--.sock") - len(digest))
    return f"smarter-{short_name[:keep]}-{digest}.sock"


def preferred_allocation(
    available: Sequence[str], must_include: Sequence[str], size: int
) -> list[str]:
    """The IDs to grant: `must_include` first, then shares spread evenly over devices.

    An ID `<device>-<n>` is share n of `<device>`. Each pick goes to the device this request
    holds fewest shares of, then to the device with the most free shares (so load stays even
    across containers), then the lowest share number, so the choice is deterministic.
    """
    chosen = list(dict.fromkeys(must_include))
    held: dict[str, int] = {}
    for device_id in chosen:
        key = _device_of(device_id)[0]
        held[key] = held.get(key, 0) + 1
    free: dict[str, list[tuple[int, str]]] = {}
    for device_id in dict.fromkeys(available):
        if device_id in chosen:
            continue
        key, slot = _device_of(device_id)
        free.setdefault(key, []).append((slot, device_id))
    for slots in free.values():
        slots.sort(reverse=True)  # pop() takes the lowest
    while len(chosen) < size and any(free.values()):
        key = min(
            (k for k, slots in free.items() if slots),
            key=lambda k: (held.get(k, 0), -len(free[k]), k),
        )
        chosen.append(free[key].pop()[1])
        held[key] = held.get(key, 0) + 1
    return chosen


def unknown_ids_message(resource: str, unknown: Sequence[str], advertised: Sequence[str]) -> str:
    """Why Allocate refuses IDs this resource does not advertise, as the pod's event shows it.

    The kubelet chose them from an older device list (the rules changed `nummaxdevices`, or the
    device manager restarted with other rules): the pod has to be admitted anew.
    """
    shown = ", ".join(unknown[:_MAX_IDS_SHOWN])
    if len(unknown) > _MAX_IDS_SHOWN:
        shown += f", ... ({len(unknown)} in all)"
    if not advertised:
        offered = "none"
    elif len(advertised) > 2:
        offered = f"{advertised[0]}..{advertised[-1]} ({len(advertised)})"
    else:
        offered = ", ".join(advertised)
    return (
        f"{resource}: unknown device IDs {shown}; this node advertises {offered}. "
        "The kubelet chose from an older device list (changed rules?): recreate the pod"
    )


class _GenericHandlersOnly:
    """Takes what the generated `add_DevicePluginServicer_to_server` adds to a server, keeping
    only the generic handler.

    The generated code also pre-registers each method with gRPC's core, which then keeps state per
    method and server: about 19 KB per resource (grpcio 1.85, measured with 200 servers), for a
    lookup saving nobody notices at a few calls a minute. The generic handler answers the same
    methods with the same messages, so the kubelet sees no difference.
    """

    def __init__(self) -> None:
        self.handlers: tuple[Any, ...] = ()

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        self.handlers = (*self.handlers, *handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        pass


def _add_servicer(servicer: ResourcePlugin, server: grpc.aio.Server) -> None:
    taken = _GenericHandlersOnly()
    _add_generated(servicer, taken)
    server.add_generic_rpc_handlers(taken.handlers)


def _device_of(device_id: str) -> tuple[str, int]:
    match = _SLOT.match(device_id)
    if match is None:
        return device_id, 0
    return match.group("device"), int(match.group("slot"))


class ResourcePlugin:
    """The DevicePlugin service of one resource (its methods are the gRPC handlers)."""

    def __init__(self, offer: Offer, source: str, plugin_dir: Path) -> None:
        self.resource = offer.resource
        self.source = source
        self.offer: Offer | None = offer
        self.ids = offer.ids
        self.socket = plugin_dir / socket_name(plugin_dir, offer.short_name)
        self.registered = False
        self._server: grpc.aio.Server | None = None
        # What open ListAndWatch streams wait on. A stream sends the list, then waits until
        # `_version` (bumped on each change the kubelet should hear of) or `_serving_epoch`
        # (bumped when this server stops) moves; a burst of changes is one update. One small
        # future per waiting stream, not a queue each: a queue is four deques, ~3 KB a stream.
        self._version = 0
        self._serving_epoch = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._log = _log.bind(resource=self.resource)

    @property
    def healthy(self) -> bool:
        return self.offer is not None

    @property
    def serving(self) -> bool:
        return self._server is not None

    def devices(self) -> list[api.Device]:
        health = HEALTHY if self.healthy else UNHEALTHY
        return [api.Device(ID=device_id, health=health) for device_id in self.ids]

    def update(self, offer: Offer | None) -> None:
        """Take the resource's current state; streams hear of it if the kubelet's view changes."""
        before = (self.ids, self.healthy)
        self.offer = offer
        if offer is not None:
            self.ids = offer.ids
        if (self.ids, self.healthy) != before:
            self._log.info("devices_changed", healthy=self.healthy, ids=len(self.ids))
            self._version += 1
            self._wake_streams()

    async def serve(self, executor: Executor | None = None) -> None:
        """Listen on the plugin's socket (replacing a stale one)."""
        await self.shutdown()
        self.socket.unlink(missing_ok=True)
        server = grpc.aio.server(migration_thread_pool=executor, options=_SERVER_OPTIONS)
        _add_servicer(self, server)
        server.add_insecure_port(f"unix://{self.socket}")
        await server.start()
        self._server = server
        self._log.debug("serving", socket=str(self.socket))

    async def shutdown(self) -> None:
        """End every stream, stop the server and remove the socket."""
        self._serving_epoch += 1
        self._wake_streams()
        server, self._server = self._server, None
        self.registered = False
        if server is not None:
            await server.stop(grace=0.2)
            self.socket.unlink(missing_ok=True)

    def register_request(self) -> api.RegisterRequest:
        return api.RegisterRequest(
            version=API_VERSION,
            endpoint=self.socket.name,
            resource_name=self.resource,
            options=plugin_options(),
        )

    # gRPC handlers: names and signatures are the API's.

    async def GetDevicePluginOptions(  # noqa: N802
        self, request: api.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.DevicePluginOptions:
        return plugin_options()

    async def ListAndWatch(  # noqa: N802
        self, request: api.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[api.ListAndWatchResponse]:
        epoch = self._serving_epoch
        self._log.info("kubelet_watching")
        while True:
            sent = self._version
            yield api.ListAndWatchResponse(devices=self.devices())
            while self._version == sent and self._serving_epoch == epoch:
                await self._changed()
            if self._serving_epoch != epoch:
                return

    async def _changed(self) -> None:
        """Wait for the next change or stop; a cancelled stream takes only its own future."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)

    def _wake_streams(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def GetPreferredAllocation(  # noqa: N802
        self,
        request: api.PreferredAllocationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> api.PreferredAllocationResponse:
        responses = [
            api.ContainerPreferredAllocationResponse(
                deviceIDs=preferred_allocation(
                    list(req.available_deviceIDs),
                    list(req.must_include_deviceIDs),
                    req.allocation_size,
                )
            )
            for req in request.container_requests
        ]
        return api.PreferredAllocationResponse(container_responses=responses)

    async def Allocate(  # noqa: N802
        self, request: api.AllocateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.AllocateResponse:
        offer = self.offer
        responses = []
        for req in request.container_requests:
            unknown = sorted(set(req.devices_ids) - set(self.ids))
            if unknown:
                # The kubelet does not read the code: any error fails the pod's admission
                # (UnexpectedAdmissionError) with the status text in its event, so the code is
                # for the operator reading it. The original's plain Go error reaches the kubelet
                # as UNKNOWN; the request's IDs are what is wrong, which INVALID_ARGUMENT says.
                self._log.warning("allocate_refused", unknown=unknown, advertised=len(self.ids))
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    unknown_ids_message(self.resource, unknown, self.ids),
                )
            if offer is None:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{self.resource}: the device is gone from this node",
                )
            assert offer is not None
            responses.append(
                api.ContainerAllocateResponse(
                    envs=dict(offer.envs),
                    devices=[
                        api.DeviceSpec(
                            container_path=node.container_path,
                            host_path=node.host_path,
                            permissions=node.permissions,
                        )
                        for node in offer.nodes
                    ],
                )
            )
        self._log.info("allocated", containers=len(responses))
        return api.AllocateResponse(container_responses=responses)

    async def PreStartContainer(  # noqa: N802
        self,
        request: api.PreStartContainerRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> api.PreStartContainerResponse:
        return api.PreStartContainerResponse()


class Plugins:
    """Every resource's plugin: started, updated, re-registered and stopped together."""

    def __init__(self, plugin_dir: Path) -> None:
        self.plugin_dir = plugin_dir
        self.kubelet_socket = plugin_dir / KUBELET_SOCKET
        self._plugins: dict[str, ResourcePlugin] = {}
        self._kubelet_absent_logged = False
        # One pool for every server rather than one each; the handlers are coroutines, so it
        # idles (no thread is started until gRPC needs one).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpc-handler")

    def __iter__(self) -> Any:
        return iter(list(self._plugins.values()))

    def get(self, resource: str) -> ResourcePlugin | None:
        return self._plugins.get(resource)

    async def apply(
        self,
        source: str,
        offers: Iterable[Offer],
        *,
        forget: Callable[[str], bool] = lambda resource: False,
    ) -> None:
        """Bring `source`'s resources to `offers`: new ones are served and registered; absent
        ones turn Unhealthy, or are stopped when `forget(resource)` (no rule wants them now).
        """
        present: dict[str, Offer] = {}
        for offer in offers:
            owner = self._plugins.get(offer.resource)
            if offer.resource in present or (owner is not None and owner.source != source):
                _log.warning("resource_name_taken", resource=offer.resource, source=source)
                continue
            present[offer.resource] = offer
        new: list[ResourcePlugin] = []
        for resource, offer in present.items():
            plugin = self._plugins.get(resource)
            if plugin is None:
                plugin = ResourcePlugin(offer, source, self.plugin_dir)
                self._plugins[resource] = plugin
                new.append(plugin)
                _log.info("resource_found", resource=resource, ids=len(offer.ids))
            else:
                plugin.update(offer)
        for plugin in list(self._plugins.values()):
            if plugin.source != source or plugin.resource in present:
                continue
            if forget(plugin.resource):
                _log.info("resource_dropped", resource=plugin.resource)
                await plugin.shutdown()
                del self._plugins[plugin.resource]
            else:
                plugin.update(None)
        await asyncio.gather(*(self._start(plugin) for plugin in new))
        await self.register(new)

    async def _start(self, plugin: ResourcePlugin) -> None:
        try:
            await plugin.serve(self._executor)
        except Exception as exc:
            _log.error("serve_failed", resource=plugin.resource, error=str(exc))

    async def restart(self) -> None:
        """The kubelet restarted (and deleted our sockets): serve anew and register again."""
        plugins = list(self._plugins.values())
        await asyncio.gather(*(self._start(plugin) for plugin in plugins))
        await self.register(plugins)

    async def revive(self) -> None:
        """Serve anew, and register again, every plugin whose socket is gone.

        The kubelet deletes every socket in the directory when it starts; the Kubernetes docs
        name a plugin noticing its own socket's deletion as the way to detect that, which also
        covers a restart whose new kubelet.sock was missed.
        """
        missing = [plugin for plugin in self._plugins.values() if not plugin.socket.is_socket()]
        if not missing:
            return
        _log.info("sockets_missing", resources=sorted(plugin.resource for plugin in missing))
        await asyncio.gather(*(self._start(plugin) for plugin in missing))
        await self.register(missing)

    async def register(self, plugins: Iterable[ResourcePlugin] | None = None) -> None:
        """Register `plugins` (default: every unregistered one) if the kubelet is listening."""
        chosen = [
            plugin
            for plugin in (self._plugins.values() if plugins is None else plugins)
            # One that could not serve is not offered: the kubelet would dial in vain.
            if not plugin.registered and plugin.serving and plugin.resource in self._plugins
        ]
        if not chosen:
            return
        if not self.kubelet_socket.exists():
            if not self._kubelet_absent_logged:
                _log.info("waiting_for_kubelet", socket=str(self.kubelet_socket))
                self._kubelet_absent_logged = True
            return
        self._kubelet_absent_logged = False
        async with grpc.aio.insecure_channel(
            f"unix://{self.kubelet_socket}", options=_CHANNEL_OPTIONS
        ) as channel:
            try:
                await asyncio.wait_for(channel.channel_ready(), KUBELET_READY_S)
            except TimeoutError:
                _log.warning(
                    "kubelet_unreachable",
                    socket=str(self.kubelet_socket),
                    waited_s=KUBELET_READY_S,
                    resources=len(chosen),
                )
                return
            stub = _registration_stub(channel)
            await asyncio.gather(*(self._register_one(stub, plugin) for plugin in chosen))

    async def _register_one(self, stub: Any, plugin: ResourcePlugin) -> None:
        try:
            await stub.Register(
                plugin.register_request(), timeout=REGISTER_TIMEOUT_S, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            _log.warning(
                "register_failed",
                resource=plugin.resource,
                code=exc.code().name,
                error=exc.details(),
            )
            return
        plugin.registered = True
        _log.info("registered", resource=plugin.resource, endpoint=plugin.socket.name)

    async def close(self) -> None:
        """Stop every server and remove every socket."""
        plugins, self._plugins = list(self._plugins.values()), {}
        await asyncio.gather(*(plugin.shutdown() for plugin in plugins), return_exceptions=True)
        self._executor.shutdown(wait=False)
