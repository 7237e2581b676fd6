"""Which DNS names a pod gets: RFC 1123 checks, the DNS-safe form of names from other clients,
the application name behind a pod name, and which names are too dangerous to handle at all."""

from __future__ import annotations

import re

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Kubernetes' random suffixes use this alphabet (no vowels, no 0/1/3), see apimachinery's rand.
_RAND = "[bcdfghjklmnpqrstvwxz2456789]"
_REPLICASET_POD = re.compile(rf"(?P<app>.+)-{_RAND}{{6,10}}-{_RAND}{{5}}")
_GENERATED_SUFFIX = re.compile(rf"(?P<app>.+)-{_RAND}{{5}}")


def is_dns_label(name: str) -> bool:
    """Whether `name` is an RFC 1123 label as Kubernetes defines it (lower case, <= 63)."""
    return len(name) <= 63 and _LABEL.fullmatch(name) is not None


# Longer than any DNS name or Kubernetes object name: nothing a client means to send.
MAX_NAME_LENGTH = 253


def dns_safe_label(name: str) -> str | None:
    """The DNS label `name` is registered under, or None if it has no unambiguous one.

    A Kubernetes pod name that is a label is its own. A name from another client, such as
    podman's generated `focused_cray` or a user's `Web_1`, gets the one obvious form: ASCII
    letters lower-cased and `_` written `-` (`focused-cray`, `web-1`). Anything else (a dot,
    another character, non-ASCII, too long for a label) has none.
    """
    if is_dns_label(name):
        return name
    if not name.isascii():
        return None  # str.lower() would fold e.g. the Kelvin sign into a plain `k`
    safe = name.lower().replace("_", "-")
    return safe if is_dns_label(safe) else None


def name_danger(name: str) -> str | None:
    """Why `name` (a pod name or namespace from CNI_ARGS) must be refused, or None.

    Only what could break out of a file, a path or a log line: control characters (a newline
    included), '/', '..', and absurd lengths. Any other name gets its network, and a DNS name
    when it has a DNS-safe form.
    """
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long, more than {MAX_NAME_LENGTH}"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        return "holds a control character (a newline, tab, escape...)"
    if "/" in name:
        return "holds '/'"
    if ".." in name:
        return "holds '..'"
    return None


def is_dns_subdomain(name: str) -> bool:
    """Whether `name` is an RFC 1123 subdomain (the rule for Kubernetes object names)."""
    return 0 < len(name) <= 253 and all(is_dns_label(part) for part in name.split("."))


def app_name(pod_name: str) -> str | None:
    """The pod's name without its controller's generated suffix, or None if it has none.

    A Deployment's pod `web-5d4f8b7c9d-x7k2p` gives `web`; a DaemonSet's or Job's `sensor-7xk2p`
    gives `sensor`; a StatefulSet's `db-0` keeps its ordinal, so it has no separate app name.
    """
    for pattern in (_REPLICASET_POD, _GENERATED_SUFFIX):
        match = pattern.fullmatch(pod_name)
        if match and is_dns_label(match["app"]):
            return match["app"]
    return None
