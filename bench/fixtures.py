"""What several benchmarks set up the same way: the host-side bundle built for a prefix of
their own, and pod network namespaces made outside any `ip netns exec`."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_bundle(bundle: Path, *, bench: str) -> Path | None:
    """The bundle built at `bundle` with `bundle` as its prefix (a node's is /opt/smarter-edge:
    only the paths baked into it differ); None, and why on stderr, when it cannot be built."""
    build = subprocess.run(
        [sys.executable, str(REPO / "scripts/build_bundle.py"), "--out", str(bundle),
         "--prefix", str(bundle)],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if build.returncode != 0:
        print(f"bench {bench}: bundle unavailable ({build.stderr.strip()[-200:]})", file=sys.stderr)
        return None
    return bundle


@contextmanager
def pod_namespaces(count: int, prefix: str) -> Iterator[list[str]]:
    """`count` network namespaces for pods, deleted on the way out. Made here, not inside
    `ip netns exec`: one made there lives in that command's private mounts, unseen by others."""
    names = [f"{prefix}{secrets.token_hex(4)}" for _ in range(count)]
    made: list[str] = []
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
            made.append(name)
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "delete", name], check=False)
