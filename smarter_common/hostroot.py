"""Where the host's filesystem is.

Every path to `/sys`, `/dev`, `/lib/firmware`, `/var/lib/kubelet` or `/run` is resolved under one
root, so the programs run unchanged on the host (`/`), in a DaemonSet with host paths mounted
elsewhere, and against the simulated gateway.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from smarter_common.errors import HostPathError

HOST_ROOT_ENV = "SMARTER_HOST_ROOT"


@dataclass(frozen=True)
class HostRoot:
    """The directory that stands for the host's `/`."""

    root: Path = Path("/")

    @classmethod
    def from_env(
        cls,
        override: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> HostRoot:
        """The root given by flag (`override`), else by `SMARTER_HOST_ROOT`, else `/`."""
        env = os.environ if environ is None else environ
        value = os.fspath(override) if override else env.get(HOST_ROOT_ENV) or "/"
        return cls(Path(value))

    def path(self, host_path: str | PurePosixPath) -> Path:
        """The real path of `host_path` (an absolute path as seen on the host)."""
        parts = PurePosixPath(host_path).parts
        if ".." in parts:
            raise HostPathError(f"host path {str(host_path)!r} contains '..'")
        relative = [p for p in parts if p != "/"]
        return self.root.joinpath(*relative)

    def to_host(self, real_path: Path) -> PurePosixPath:
        """The host's view of a path under this root (the inverse of `path`)."""
        try:
            relative = real_path.relative_to(self.root)
        except ValueError as exc:
            raise HostPathError(f"{real_path} is outside the host root {self.root}") from exc
        return PurePosixPath("/") / PurePosixPath(relative.as_posix())

    @property
    def sys(self) -> Path:
        return self.path("/sys")

    @property
    def dev(self) -> Path:
        return self.path("/dev")

    @property
    def run(self) -> Path:
        return self.path("/run")

    @property
    def lib_firmware(self) -> Path:
        return self.path("/lib/firmware")

    @property
    def kubelet(self) -> Path:
        return self.path("/var/lib/kubelet")

    @property
    def device_plugins(self) -> Path:
        return self.path("/var/lib/kubelet/device-plugins")

    @property
    def remoteproc_class(self) -> Path:
        return self.path("/sys/class/remoteproc")

    @property
    def firmware_search_path_param(self) -> Path:
        """The kernel parameter naming an extra directory the firmware loader searches first."""
        return self.path("/sys/module/firmware_class/parameters/path")

    @property
    def devicetree_base(self) -> Path:
        return self.path("/sys/firmware/devicetree/base")
