"""The filesystem events the daemon reacts to, by inotify (watchdog).

- `/dev`, recursively: device nodes appearing, vanishing or renamed (no modify/access events,
  so a busy serial port does not wake the daemon), except below the pseudo directories (`pts`,
  `shm`, ...) the rules do not name: a new pty per `kubectl exec` is not a reason to rescan.
- the rules file's directory: a ConfigMap volume swaps its `..data` symlink rather than writing
  the file, so the directory is watched, not the file.
- the plugin directory: `kubelet.sock` created means the kubelet (re)started; any other socket
  deleted may be one of ours, gone because the kubelet restarted (the documented fallback for
  noticing a restart) or because someone removed it.

sysfs cannot be watched by inotify, so remote cores are rescanned on `/dev` events (a core's
console appears there) and by the daemon's periodic check.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

_STRUCTURE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]


class Change(Enum):
    DEV = "dev"
    RULES = "rules"
    KUBELET = "kubelet"
    PLUGIN_SOCKET = "plugin_socket"


class _Forward(FileSystemEventHandler):
    def __init__(
        self,
        notify: Callable[[Change], None],
        change: Change,
        ignore: Callable[[str], bool] = lambda path: False,
    ) -> None:
        self._notify = notify
        self._change = change
        self._ignore = ignore

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not self._ignore(os.fsdecode(event.src_path)):
            self._notify(self._change)


class _PluginDir(FileSystemEventHandler):
    def __init__(self, notify: Callable[[Change], None], kubelet_socket: Path) -> None:
        self._notify = notify
        self._kubelet_socket = str(kubelet_socket)

    def on_created(self, event: FileSystemEvent) -> None:
        if os.fsdecode(event.src_path) == self._kubelet_socket:
            self._notify(Change.KUBELET)

    def on_moved(self, event: FileSystemEvent) -> None:
        if os.fsdecode(event.dest_path) == self._kubelet_socket:
            self._notify(Change.KUBELET)

    def on_deleted(self, event: FileSystemEvent) -> None:
        if os.fsdecode(event.src_path) != self._kubelet_socket:
            self._notify(Change.PLUGIN_SOCKET)


class Watcher:
    """Calls `notify(change)` from watchdog's thread for each relevant event."""

    def __init__(
        self,
        notify: Callable[[Change], None],
        dev: Path,
        rules_file: Path,
        plugin_dir: Path,
        quiet_dirs: Callable[[], Iterable[str]] = lambda: (),
    ) -> None:
        """`quiet_dirs()` names the directories below `dev` whose contents are not heard; it is
        asked on each event (from watchdog's thread), so it may change as the rules do."""
        self._observer = Observer()
        root = f"{dev}/"

        def quiet(path: str) -> bool:
            if not path.startswith(root):
                return False
            top, slash, _ = path[len(root) :].partition("/")
            return bool(slash) and top in quiet_dirs()

        self._observer.schedule(
            _Forward(notify, Change.DEV, quiet),
            str(dev),
            recursive=True,
            event_filter=_STRUCTURE_EVENTS,
        )
        if rules_file.parent.is_dir():
            self._observer.schedule(
                _Forward(notify, Change.RULES),
                str(rules_file.parent),
                recursive=False,
                # An editor or `cp` rewriting the file in place ends with a close after writing.
                event_filter=[*_STRUCTURE_EVENTS, FileClosedEvent],
            )
        self._observer.schedule(
            _PluginDir(notify, plugin_dir / "kubelet.sock"),
            str(plugin_dir),
            recursive=False,
            event_filter=[FileCreatedEvent, FileMovedEvent, FileDeletedEvent],
        )

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
