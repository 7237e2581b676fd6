"""The filesystem events the daemon reacts to, by inotify (watchdog).

- `/dev`, recursively: device nodes appearing, vanishing or renamed (no modify/access events,
  so a busy serial port does not wake the daemon).
- the rules file's directory: a ConfigMap volume swaps its `..data` symlink rather than writing
  the file, so the directory is watched, not the file.
- the plugin directory: `kubelet.sock` created means the kubelet (re)started.

sysfs cannot be watched by inotify, so remote cores are rescanned on `/dev` events (a core's
console appears there) and by the daemon's periodic check.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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

from device_plugin.dev_source import NO_DEVICES

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


class _Forward(FileSystemEventHandler):
    def __init__(
        self, notify: Callable[[Change], None], change: Change, ignore: tuple[str, ...] = ()
    ) -> None:
        self._notify = notify
        self._change = change
        self._ignore = ignore

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = os.fsdecode(event.src_path)
        if not any(path.startswith(prefix) for prefix in self._ignore):
            self._notify(self._change)


class _KubeletSocket(FileSystemEventHandler):
    def __init__(self, notify: Callable[[Change], None], socket: Path) -> None:
        self._notify = notify
        self._socket = str(socket)

    def on_created(self, event: FileSystemEvent) -> None:
        if event.src_path == self._socket:
            self._notify(Change.KUBELET)

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.dest_path == self._socket:
            self._notify(Change.KUBELET)


class Watcher:
    """Calls `notify(change)` from watchdog's thread for each relevant event."""

    def __init__(
        self,
        notify: Callable[[Change], None],
        dev: Path,
        rules_file: Path,
        plugin_dir: Path,
    ) -> None:
        self._observer = Observer()
        quiet = tuple(f"{dev}/{name}/" for name in NO_DEVICES)
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
            _KubeletSocket(notify, plugin_dir / "kubelet.sock"),
            str(plugin_dir),
            recursive=False,
            event_filter=[FileCreatedEvent, FileMovedEvent],
        )

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
