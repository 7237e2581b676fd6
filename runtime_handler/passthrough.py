"""Hand a call to the real runc, arguments unchanged (stdlib only: the hot path)."""

from __future__ import annotations

import os
import sys

from runtime_handler import settings
from runtime_handler.route import RUNC_CANDIDATES


def find_runc(configured: str | None = None) -> str:
    """The runc to hand calls to: the configured one (`SMARTER_RUNC`), else the
    distribution's, else `runc` on PATH."""
    if configured:
        return configured
    for candidate in RUNC_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", "runc")
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return "runc"


def exec_runc(argv: list[str]) -> None:
    """Replace this process with runc, given `argv[1:]` exactly as we received them."""
    runc = find_runc(settings.current().runc)
    try:
        os.execv(runc, [runc, *argv[1:]])
    except OSError as error:
        # Only reached when runc cannot be executed at all.
        print(
            f"smarter-hybrid-runtime: cannot execute runc at {runc}: {error.strerror}"
            f" (set {settings.RUNC_ENV} to runc's path)",
            file=sys.stderr,
        )
        raise SystemExit(127) from None


# What runc's `list` says of our state directory inside its --root (it is no runc container).
_OUR_DIRECTORY_COMPLAINT = b"load container smarter-hybrid: "


def list_containers(argv: list[str]) -> int:
    """`list`, runc's answer with its complaint about our state directory left out."""
    import subprocess

    runc = find_runc(settings.current().runc)
    try:
        result = subprocess.run([runc, *argv[1:]], stderr=subprocess.PIPE, check=False)
    except OSError as error:
        print(f"smarter-hybrid-runtime: cannot execute runc at {runc}: {error.strerror}",
              file=sys.stderr)  # fmt: skip
        return 127
    for line in result.stderr.splitlines(keepends=True):
        if not line.startswith(_OUR_DIRECTORY_COMPLAINT):
            sys.stderr.buffer.write(line)
    sys.stderr.flush()
    return result.returncode
