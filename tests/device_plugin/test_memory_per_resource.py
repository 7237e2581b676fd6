"""What one more resource costs the device manager, with the kubelet connected and watching it.

A child process serves resources the way the daemon does (one gRPC server and socket each); this
test is the kubelet, holding a connection and a ListAndWatch stream open on every one. The child's
RSS is read between two counts, so the interpreter, the libraries and gRPC's start-up cancel out.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from testbed.kubelet import PluginConnection
from tests.device_plugin.conftest import HostTree

REPO = Path(__file__).resolve().parents[2]
FIRST, SECOND = 50, 150
# Measured here with grpcio 1.85: ~48 KB, most of it gRPC's C core (the server, the kubelet's
# connection, its open stream). Before the servers dropped gRPC core's per-method registration
# and each stream its own queue: ~71 KB.
LIMIT_KB = 60

_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from smarter_common import logs
    logs.configure(level="warning", stream=sys.stderr)
    from device_plugin.server import ResourcePlugin
    from device_plugin.sources import Offer

    def rss_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    async def main(plugin_dir, counts):
        loop = asyncio.get_running_loop()
        plugins = []
        for count in counts:
            while len(plugins) < count:
                offer = Offer(f"smarter-devices/ttyUSB{len(plugins)}", ("ttyUSB0",))
                plugin = ResourcePlugin(offer, "dev", plugin_dir)
                await plugin.serve()
                plugins.append(plugin)
            print("serving", flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)  # the kubelet is watching
            await asyncio.sleep(0.5)
            print(rss_kb(), flush=True)
        await asyncio.gather(*(plugin.shutdown() for plugin in plugins))

    asyncio.run(main(Path(sys.argv[1]), [int(n) for n in sys.argv[2:]]))
    """
)


def test_a_watched_resource_costs_the_daemon_less_than_60_kb(host: HostTree) -> None:
    host.plugin_dir.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(host.plugin_dir), str(FIRST), str(SECOND)],
        cwd=REPO,
        env={"MALLOC_ARENA_MAX": "2", "PATH": "/usr/bin:/bin"},  # as the DaemonSet's env
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    connections: list[PluginConnection] = []
    try:
        readings = []
        for count in (FIRST, SECOND):
            assert child.stdout.readline().strip() == "serving"
            sockets = sorted(host.plugin_dir.glob("smarter-*.sock"))
            for socket in sockets[len(connections) :]:
                connection = PluginConnection(socket)
                connection.watch().get(timeout=10)
                connections.append(connection)
            assert len(connections) == count
            child.stdin.write("watching\n")
            child.stdin.flush()
            readings.append(int(child.stdout.readline()))
        per_resource_kb = (readings[1] - readings[0]) / (SECOND - FIRST)
        assert per_resource_kb < LIMIT_KB, f"{per_resource_kb:.1f} KB per watched resource"
    finally:
        for connection in connections:
            connection.close()
        child.stdin.close()
        try:
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
