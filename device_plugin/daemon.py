"""The long-running part: keeps the served resources equal to what the host has, by events."""

from __future__ import annotations

import asyncio
from pathlib import Path

from device_plugin.dev_source import DevSource
from device_plugin.remoteproc_source import RemoteprocSource
from device_plugin.rules import Rule, load_rules
from device_plugin.server import Plugins
from device_plugin.sources import Offer, PathView, Source
from device_plugin.watch import Change, Watcher
from smarter_common.errors import SmarterError
from smarter_common.hostroot import HostRoot
from smarter_common.logs import get_logger

# Events closer together than this are one rescan (udev makes a node, then its symlinks).
DEBOUNCE_S = 0.01
# sysfs gives no events: remote cores are also rescanned, and failed registrations retried, here.
PERIODIC_S = 5.0

_log = get_logger("smarter-device-manager")


class Daemon:
    """Owns the sources and the plugins; `notify` may be called from any thread."""

    def __init__(
        self,
        host: HostRoot,
        rules_file: Path,
        rules: list[Rule],
        plugin_dir: Path,
        view: PathView = "host",
    ) -> None:
        self.host = host
        self.rules_file = rules_file
        self.plugin_dir = plugin_dir
        self.dev = DevSource(host, rules, view)
        self.remoteproc = RemoteprocSource(host, view)
        self.plugins = Plugins(plugin_dir)
        self._rules_text = _read(rules_file)
        self._pending: set[Change] = set()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def notify(self, change: Change) -> None:
        self._loop.call_soon_threadsafe(self._mark, change)

    def _mark(self, change: Change) -> None:
        self._pending.add(change)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        watcher = Watcher(
            self.notify,
            self.host.dev,
            self.rules_file,
            self.plugin_dir,
            quiet_dirs=lambda: self.dev.quiet,
        )
        watcher.start()
        try:
            await self._refresh(reloaded=False)
            _log.info("started", resources=sum(1 for _ in self.plugins))
            stopping = asyncio.ensure_future(stop.wait())
            while not stop.is_set():
                waking = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    {stopping, waking}, timeout=PERIODIC_S, return_when=asyncio.FIRST_COMPLETED
                )
                waking.cancel()
                if stop.is_set():
                    break
                if self._wake.is_set():
                    await asyncio.sleep(DEBOUNCE_S)
                await self._handle(self._take())
        finally:
            watcher.stop()
            await self.plugins.close()
            _log.info("stopped")

    def _take(self) -> set[Change]:
        changes, self._pending = self._pending, set()
        self._wake.clear()
        return changes

    async def _handle(self, changes: set[Change]) -> None:
        _log.debug("rescan", changes=sorted(change.value for change in changes))
        reloaded = Change.RULES in changes and self._reload_rules()
        if Change.KUBELET in changes:
            _log.info("kubelet_restarted")
            await self.plugins.restart()
        else:
            # Also on every periodic tick: a deleted socket is how a plugin notices a kubelet
            # restart whose kubelet.sock event it missed.
            await self.plugins.revive()
        await self._refresh(reloaded=reloaded)
        await self.plugins.register()

    def _reload_rules(self) -> bool:
        """Apply a changed rules file; keep the last good rules if it is broken."""
        text = _read(self.rules_file)
        if text == self._rules_text:
            return False
        self._rules_text = text
        try:
            rules = load_rules(self.rules_file)
        except SmarterError as exc:
            _log.error("rules_rejected", file=str(self.rules_file), error=str(exc))
            return False
        self.dev.rules = rules
        _log.info("rules_reloaded", file=str(self.rules_file), rules=len(rules))
        return True

    async def _refresh(self, *, reloaded: bool) -> None:
        """Rescan both sources. After a rules reload, a /dev resource whose device is absent is
        dropped only if no rule matches its path any more; otherwise it stays, Unhealthy."""
        await self.plugins.apply(
            self.dev.name,
            _scan(self.dev),
            forget=(lambda resource: not self.dev.wants(resource)) if reloaded else _keep,
        )
        await self.plugins.apply(self.remoteproc.name, _scan(self.remoteproc))


def _keep(resource: str) -> bool:
    return False


def _scan(source: Source) -> list[Offer]:
    try:
        return source.scan()
    except OSError as exc:
        _log.error("scan_failed", source=source.name, error=str(exc))
        return []


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
