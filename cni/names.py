"""Which DNS names a pod gets: RFC 1123 checks and the application name behind a pod name."""

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
