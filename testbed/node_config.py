"""What a node operator sets on top of a distribution's containerd config, for our test bed.

The demo and the tests start containerd from a distribution's own config (Debian's packaged
one, `containerd config default`, k3s' rendered one) after the installers ran, exactly as a
node does. A containerd of our own must still keep everything under one work directory and
not touch the machine's: that is what `operator_paths` changes, and nothing else. It reads the
config as TOML and writes it back whole (comments are lost, every setting is kept), so the
distribution's runtimes, plugins and options reach containerd unchanged.

What it sets, in the spelling of the config's schema (1: containerd 1.x `plugins.cri`; 2:
containerd 1.x `io.containerd.grpc.v1.cri`; 3: containerd 2.x, whose CRI settings are split
between `io.containerd.cri.v1.runtime`, `io.containerd.cri.v1.images` and
`io.containerd.grpc.v1.cri`):
- containerd's `root`, `state`, gRPC socket and the `opt` plugin's directory, under the layout;
- snapshotters that would create directories of their own are disabled (added to the list);
- the CRI plugin's sandbox image, CNI plugin and config directories, optionally its snapshotter;
  pod network namespaces mounted under the state directory; no AppArmor profile loaded (the
  test bed must not load profiles into the machine's kernel); OOM score adjustments clamped;
- `options.Root` (runc's state directory) of every runc-shim runtime the config declares.
A runtime the config does not declare is never added here: adding a table to containerd 1.x's
runtimes map replaces the built-in one, which is the installer's concern, not the operator's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smarter_common import containerd
from testbed.containerd import ContainerdLayout

RUNC_SHIM_TYPES = frozenset({"io.containerd.runc.v2", "io.containerd.runc.v1"})
# Snapshotters that would otherwise make or probe directories outside the work directory.
_SNAPSHOTTERS = ("aufs", "btrfs", "zfs", "devmapper")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def operator_paths(
    text: str,
    layout: ContainerdLayout,
    *,
    sandbox_image: str,
    cni_bin_dir: Path | str,
    cni_conf_dir: Path | str,
    snapshotter: str | None = None,
) -> str:
    """`text` (a containerd config of schema 1, 2 or 3) with the test bed's paths set.

    Raises smarter_common.errors.ConfigError when `text` is not TOML or its schema unknown.
    """
    document = containerd.parse_config(text, source=str(layout.config)) if text.strip() else {}
    version = containerd.config_version(document, source=str(layout.config))
    document["root"] = str(layout.root)
    document["state"] = str(layout.state)
    _table(document, ("grpc",))["address"] = str(layout.socket)
    disabled = [str(name) for name in document.get("disabled_plugins", [])]
    for short in _SNAPSHOTTERS:
        name = short if version == 1 else f"io.containerd.snapshotter.v1.{short}"
        if name not in disabled:
            disabled.append(name)
    document["disabled_plugins"] = disabled
    opt = ("plugins", "opt") if version == 1 else ("plugins", "io.containerd.internal.v1.opt")
    _table(document, opt)["path"] = str(layout.base / "opt")

    runtime = _table(document, containerd.cri_runtime_plugin(version))
    images = _table(document, _images_plugin(version))
    if version == 3:
        _subtable(images, "pinned_images")["sandbox"] = sandbox_image
    else:
        images["sandbox_image"] = sandbox_image
    if snapshotter is not None:
        holder = images if version == 3 else _subtable(runtime, "containerd")
        holder["snapshotter"] = snapshotter
    cni = _subtable(runtime, "cni")
    cni.pop("bin_dirs", None)  # containerd >= 2.1's list form; one directory is ours
    cni["bin_dir"] = str(cni_bin_dir)
    cni["conf_dir"] = str(cni_conf_dir)
    runtime["netns_mounts_under_state_dir"] = True
    runtime["disable_apparmor"] = True
    runtime["restrict_oom_score_adj"] = True
    runtimes = containerd.lookup(runtime, ("containerd", "runtimes"))
    for declared in (runtimes or {}).values():
        if isinstance(declared, dict) and declared.get("runtime_type") in RUNC_SHIM_TYPES:
            _subtable(declared, "options")["Root"] = str(layout.runc_root)
    return dumps(document)


def _images_plugin(version: int) -> tuple[str, ...]:
    if version == 3:
        return ("plugins", "io.containerd.cri.v1.images")
    return containerd.cri_runtime_plugin(version)


def _table(document: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node = document
    for key in path:
        node = _subtable(node, key)
    return node


def _subtable(table: dict[str, Any], key: str) -> dict[str, Any]:
    found = table.setdefault(key, {})
    if not isinstance(found, dict):
        raise TypeError(f"{key} is a {type(found).__name__}, not a table")
    return found


def dumps(document: Mapping[str, Any]) -> str:
    """A TOML document for `document` (as tomllib reads it: no dates, no arrays of tables)."""
    lines: list[str] = []
    _emit(document, (), lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _emit(table: Mapping[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.extend(["", f"[{'.'.join(_key(part) for part in path)}]"])
    lines.extend(f"{_key(key)} = {_value(value)}" for key, value in scalars.items())
    for key, value in tables.items():
        _emit(value, (*path, key), lines)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        inline = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return "{" + inline + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")
