"""`smarter-cni agent`: the long-running half that does the plugin's work, warm.

It keeps pyroute2 imported and the bridge and masquerade checks done, and serves the same
requests the plugin would handle itself, over a unix socket in the state directory.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socketserver
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from cni import client, config, plugin
from cni.errors import INVALID_CONFIG, CniError
from cni.node import NodeNetwork, WarmState
from smarter_common.hostroot import HostRoot
from smarter_common.logs import get_logger

log = get_logger("smarter-cni-agent")
_node_log = get_logger("smarter-cni")


class _Nodes:
    """Each request's NodeNetwork, sharing what was ensured per distinct network configuration."""

    def __init__(self, host_root: HostRoot) -> None:
        self._root = host_root
        self._warm: dict[str, WarmState] = {}
        self._lock = threading.Lock()

    def __call__(self, conf: config.NetConf) -> NodeNetwork:
        with self._lock:
            warm = self._warm.setdefault(conf.key, WarmState())
        return NodeNetwork(conf, self._root, warm, log=_node_log)


def answer(message: bytes, nodes: _Nodes) -> bytes:
    """The reply to one wire message (see cni.client)."""
    try:
        env, stdin = client.decode_request(message)
    except (ValueError, UnicodeDecodeError) as error:
        failure = CniError(plugin.INTERNAL_ERROR, "malformed request to the agent", str(error))
        return client.encode_answer(1, json.dumps(failure.to_dict(client.DEFAULT_VERSION)).encode())
    netns = env.get("CNI_NETNS", "")
    if netns and env.get("CNI_COMMAND") in ("ADD", "CHECK") and not os.path.exists(netns):
        # Not mounted where the agent can see it (e.g. /proc/<pid>/ns/net of a host process):
        # the plugin, on the host, can; and if it cannot either, it says so with code 4.
        log.info(
            "deferred",
            command=env.get("CNI_COMMAND"),
            container_id=env.get("CNI_CONTAINERID"),
            netns=netns,
        )
        return client.DEFER
    started = time.perf_counter()
    status, output = plugin.execute(env, stdin, nodes)
    log.info(
        "served" if status == 0 else "refused",
        command=env.get("CNI_COMMAND"),
        container_id=env.get("CNI_CONTAINERID"),
        ms=round((time.perf_counter() - started) * 1000, 2),
        **({"answer": output.decode(errors="replace")} if status else {}),
    )
    return client.encode_answer(status, output)


def _too_large(error: client.MessageTooLargeError) -> bytes:
    """The answer to a request the agent stopped reading: a CNI error, and a log line."""
    log.warning("request_too_large", read=len(error.head), limit=client.MAX_MESSAGE)
    failure = CniError(
        INVALID_CONFIG,
        "request too large for the smarter-cni agent",
        f"more than {client.MAX_MESSAGE} bytes of environment and network configuration",
        hint="a network configuration this large is not one smarter-cni can have written",
    )
    version = client.answer_version(error.head.partition(b":")[2])
    return client.encode_answer(1, json.dumps(failure.to_dict(version)).encode())


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    # The listen backlog. socketserver's default of 5 makes a burst of pods (a node coming up,
    # a DaemonSet rollout) overflow it; the overflow waits out the plugin's 0.5 s connect
    # timeout and then does its work in-process, slowly.
    request_queue_size = 128
    nodes: _Nodes

    def shutdown_request(self, request: Any) -> None:
        # The plugin reads its answer until the connection closes: collect after that.
        super().shutdown_request(request)
        _collect_request_garbage()


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            message = client.read_all(self.request)
        except client.MessageTooLargeError as error:
            reply = _too_large(error)
        else:
            reply = answer(message, self.server.nodes)
        try:
            self.request.sendall(reply)
        except OSError as error:
            # The plugin stopped waiting (and told the runtime to try again later).
            log.warning("answer_undelivered", error=str(error))


def _collect_request_garbage() -> None:
    """Free the reference cycles a request left, once the plugin has its answer.

    pyroute2's messages refer to their parents and their request filters (about 350 cyclic
    objects per ADD). Left to the collector's thresholds they outlive a few requests, reach the
    oldest generation and wait for a full collection; the pages they held stay with the agent
    (about 2 MB over the first 1,000 ADD/DEL pairs). With start-up frozen (`serve`), a full
    collection only walks what requests left: a fraction of a millisecond, after the
    connection is closed.
    """
    gc.collect()


def serve(conf_path: Path, socket_path: Path | None, host_root: HostRoot) -> int:
    """Validate the node's conflist, prepare the network, then answer until SIGTERM."""
    conf = config.parse(config.load_conflist(conf_path))
    nodes = _Nodes(host_root)
    node = nodes(conf)
    node.ensure_bridge()
    if conf.ip_masq:
        node.ensure_masquerade()
    path = socket_path or host_root.path(conf.socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    server = _Server(str(path), _Handler)
    os.chmod(path, 0o600)
    server.nodes = nodes

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    # Everything start-up made (modules, pyroute2's tables, the parsed network) lives as long as
    # the agent: out of the collector's way, so each request's collection is small.
    gc.freeze()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving", socket=str(path), bridge=conf.bridge, subnet=str(conf.subnet))
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        path.unlink(missing_ok=True)
        log.info("stopped")
    return 0
