r"""The rules file: which entries under `/dev` become resources, and how many pods may share each.

Compatible with smarter-device-manager's `conf.yaml`: a YAML list of
`{devicematch: <regex>, nummaxdevices: <int>}`. The regex is searched in every path relative to
`/dev` (`ttyUSB0`, `snd`, `bus/usb/001/002`); a match names the resource after that path with `/`
replaced by `_`. The whole file is validated before any of it is used.

The regexes are RE2, through Google's own library: the original compiles them with Go's `regexp`,
which is RE2 syntax and semantics, and Python's `re` reads the same text differently (POSIX
classes such as `[[:digit:]]`, `\z` and `\pN` are RE2; lookaround and backreferences are not).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import re2
import yaml

from smarter_common.errors import ConfigError

RESOURCE_DOMAIN = "smarter-devices"
# More IDs than this is a typo, not a plan: every ID is sent to the kubelet on each update.
MAX_SHARES = 1000
_KEYS = ("devicematch", "nummaxdevices")
# The name part of an extended resource name is a Kubernetes qualified name.
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_NOT_NAME_CHAR = re.compile(r"[^-A-Za-z0-9_.]")
_MAX_NAME = 63
# Device IDs were meant to be DNS-label sized when the API was designed (kubernetes#49342); the
# kubelet does not check, but tools that read them back (pod resources API, labels) may.
MAX_DEVICE_ID = 63

# Go's regexp and RE2 refuse the same patterns; RE2's own stderr logging of each refusal is off,
# the refusal is reported once, as a ConfigError naming the rule.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_HINT = (
    "devicematch is RE2 syntax, as the original's Go regexp reads it: no lookaround, "
    "backreferences or possessive quantifiers, '\\z' ends the text; "
    "https://github.com/google/re2/wiki/Syntax"
)

EntryKind = Literal["char", "block", "dir", "link", "other"]


@dataclass(frozen=True)
class Rule:
    """One validated rule; `number` is its 1-based position in the file, used in messages."""

    number: int
    devicematch: str
    pattern: re2._Regexp[str]
    nummaxdevices: int


@dataclass(frozen=True)
class DevEntry:
    """One entry of the `/dev` tree, by its path relative to `/dev`.

    For a symlink, `target` is where it resolves, relative to `/dev`, or None when it resolves
    outside the tree (or nowhere).
    """

    path: str
    kind: EntryKind
    target: str | None = None


@dataclass(frozen=True)
class NodeSpec:
    """One device node to hand over: where the container sees it and where it really is.

    Both paths are relative to `/dev`.
    """

    container_path: str
    real_path: str


@dataclass(frozen=True)
class Resource:
    """A matched entry: resource `smarter-devices/<short_name>` with `shares` device IDs."""

    short_name: str
    entry: str
    rule: int
    shares: int
    nodes: tuple[NodeSpec, ...]

    @property
    def name(self) -> str:
        return f"{RESOURCE_DOMAIN}/{self.short_name}"

    @property
    def ids(self) -> tuple[str, ...]:
        return device_ids(self.short_name, self.shares)


@dataclass(frozen=True)
class Rejection:
    """A matched entry that is not handed over, and why (`devicematch` is the rule's pattern)."""

    rule: int
    devicematch: str
    entry: str
    reason: str


def device_ids(short_name: str, shares: int) -> tuple[str, ...]:
    """The IDs of a device shared `shares` times: `<name>-0` .. `<name>-<shares-1>`.

    When the longest ID would exceed MAX_DEVICE_ID characters, `<name>` is cut and a digest of
    the whole name appended (`<start of name>-<crc32>`), so IDs stay valid and distinct.
    """
    base = _id_base(short_name, shares)
    return tuple(f"{base}-{index}" for index in range(shares))


def _id_base(short_name: str, shares: int) -> str:
    room = MAX_DEVICE_ID - len(f"-{max(shares - 1, 0)}")
    if len(short_name) <= room:
        return short_name
    digest = f"{zlib.crc32(short_name.encode()):08x}"
    return f"{short_name[: room - len(digest) - 1]}-{digest}"


def parse_rules(text: str, source: str = "rules") -> list[Rule]:
    """Validate the whole rules document; raise ConfigError naming the first bad rule and field."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{source}: not valid YAML: {exc}",
            hint="the file must be a YAML list of {devicematch, nummaxdevices} rules",
        ) from exc
    if not isinstance(document, list):
        found = "nothing" if document is None else f"a {type(document).__name__}"
        raise ConfigError(
            f"{source}: expected a list of rules, found {found}",
            hint="write '- devicematch: ^ttyUSB[0-9]*$' / '  nummaxdevices: 1' items",
        )
    return [_parse_rule(item, number, source) for number, item in enumerate(document, start=1)]


def load_rules(path: Path) -> list[Rule]:
    """Read and validate the rules file at `path`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read rules file {path}: {exc.strerror or exc}",
            hint="pass --rules FILE or mount the rules ConfigMap there",
        ) from exc
    return parse_rules(text, source=str(path))


def _parse_rule(item: Any, number: int, source: str) -> Rule:
    where = f"{source}: rule {number}"
    if not isinstance(item, dict):
        raise ConfigError(
            f"{where}: expected a mapping with devicematch and nummaxdevices, "
            f"found {type(item).__name__} {item!r}"
        )
    unknown = sorted(str(key) for key in item if key not in _KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {', '.join(repr(k) for k in unknown)}",
            hint="a rule has only devicematch and nummaxdevices",
        )
    for key in _KEYS:
        if key not in item:
            raise ConfigError(f"{where}: field {key!r} is missing")
    devicematch = item["devicematch"]
    if not isinstance(devicematch, str):
        raise ConfigError(
            f"{where}: field 'devicematch' must be a string (a regular expression), "
            f"found {devicematch!r}"
        )
    where = f"{where} (devicematch {devicematch!r})"
    if devicematch == "":
        raise ConfigError(
            f"{where}: field 'devicematch' is empty and would match every entry in /dev",
            hint="anchor the pattern, e.g. '^ttyUSB[0-9]+$'",
        )
    pattern = _compile(devicematch, where)
    shares = item["nummaxdevices"]
    if isinstance(shares, bool) or not isinstance(shares, int):
        raise ConfigError(
            f"{where}: field 'nummaxdevices' must be a whole number, found {shares!r}"
        )
    if not 1 <= shares <= MAX_SHARES:
        raise ConfigError(
            f"{where}: field 'nummaxdevices' is {shares}, must be between 1 and {MAX_SHARES}",
            hint="1 makes the device exclusive to one container",
        )
    return Rule(number=number, devicematch=devicematch, pattern=pattern, nummaxdevices=shares)


def _compile(devicematch: str, where: str) -> re2._Regexp[str]:
    try:
        return re2.compile(devicematch, _RE2_OPTIONS)
    except re2.error as exc:
        raise ConfigError(
            f"{where}: field 'devicematch' is not a valid RE2 regular expression: "
            f"{_re2_reason(exc)}",
            hint=_RE2_HINT,
        ) from exc
    except UnicodeEncodeError as exc:
        # YAML escapes can spell lone surrogates, which have no UTF-8 form to hand to RE2.
        raise ConfigError(
            f"{where}: field 'devicematch' holds {exc.object[exc.start : exc.end]!r}, "
            "which is not text RE2 can read (a lone surrogate)"
        ) from exc


def _re2_reason(exc: re2.error) -> str:
    """RE2's own words for a refused pattern (the binding hands them over as bytes)."""
    reason = exc.args[0] if exc.args else exc
    if isinstance(reason, bytes):
        return reason.decode("utf-8", "replace")
    return str(reason)


def resource_short_name(path: str) -> str | None:
    """The resource name for a path under /dev (`bus/usb/001` → `bus_usb_001`), None if unusable.

    `/` becomes `_` as in the original; other characters a resource name cannot hold become `_`.
    """
    name = _NOT_NAME_CHAR.sub("_", path.replace("/", "_"))
    if len(name) > _MAX_NAME or not _QUALIFIED_NAME.match(name):
        return None
    return name


def match_devices(
    rules: Sequence[Rule],
    entries: Iterable[DevEntry],
    rejected: list[Rejection] | None = None,
) -> list[Resource]:
    """The resources the rules make of the `/dev` tree `entries`, in rule order then path order.

    The first rule that matches an entry decides its share count. A matched device node is one
    resource; a matched directory hands over every device node below it; a symlink hands over
    what it resolves to, under its own name. Entries that match but cannot be handed over are
    added to `rejected` when given.
    """
    by_path = {entry.path: entry for entry in entries}
    ordered = sorted(by_path)
    taken: set[str] = set()
    names: set[str] = set()
    resources: list[Resource] = []

    def reject(rule: Rule, path: str, reason: str) -> None:
        if rejected is not None:
            rejected.append(
                Rejection(rule=rule.number, devicematch=rule.devicematch, entry=path, reason=reason)
            )

    for rule in rules:
        for path in ordered:
            if path in taken or not rule.pattern.search(path):
                continue
            taken.add(path)
            entry = by_path[path]
            if entry.kind == "link" and entry.target is None:
                reject(rule, path, "symlink resolves outside /dev")
                continue
            nodes = _nodes_of(entry, by_path, ordered)
            if not nodes:
                continue
            short = resource_short_name(path)
            if short is None:
                reject(rule, path, "name cannot be made a valid resource name")
                continue
            if short in names:
                reject(rule, path, f"resource name {short!r} is already taken")
                continue
            names.add(short)
            resources.append(
                Resource(
                    short_name=short,
                    entry=path,
                    rule=rule.number,
                    shares=rule.nummaxdevices,
                    nodes=nodes,
                )
            )
    return resources


def _nodes_of(
    entry: DevEntry, by_path: dict[str, DevEntry], ordered: list[str]
) -> tuple[NodeSpec, ...]:
    if entry.kind in ("char", "block"):
        return (NodeSpec(container_path=entry.path, real_path=entry.path),)
    if entry.kind == "dir":
        return _nodes_below(entry.path, entry.path, by_path, ordered)
    if entry.kind == "link" and entry.target is not None:
        target = by_path.get(entry.target)
        if target is None:
            return ()
        if target.kind in ("char", "block"):
            return (NodeSpec(container_path=entry.path, real_path=target.path),)
        if target.kind == "dir":
            return _nodes_below(target.path, entry.path, by_path, ordered)
    return ()


def _nodes_below(
    real_dir: str, seen_as: str, by_path: dict[str, DevEntry], ordered: list[str]
) -> tuple[NodeSpec, ...]:
    prefix = real_dir + "/"
    nodes = []
    for path in ordered:
        if not path.startswith(prefix):
            continue
        entry = by_path[path]
        if entry.kind in ("char", "block"):
            relative = PurePosixPath(path).relative_to(real_dir)
            nodes.append(NodeSpec(container_path=f"{seen_as}/{relative}", real_path=path))
    return tuple(nodes)
