"""Where the host's filesystem is, as far as the hardware goes.

The host root is the directory that stands for the host's `/` where its hardware is seen:
`/dev`, `/sys` (remote cores, the firmware loader's parameters, the device tree),
`/lib/firmware`, and the cores' state under `/run` are resolved under it. So the programs run
unchanged on the host (`/`), in a DaemonSet with the host's paths mounted under `/host`, and
against the simulated gateway (a directory served by `smarter-sim`).

What belongs to the node's own kubelet and containerd does not move with it: the kubelet's
device plugin directory (`/var/lib/kubelet/device-plugins`), containerd's state and sockets are
where this machine's kubelet and containerd keep them, whatever the host root (a simulated
gateway has neither). A program that must reach them somewhere else says so with a flag of its
own (`smarter-device-manager --plugin-dir`); this module offers no default for them.
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
    def remoteproc_class(self) -> Path:
        return self.path("/sys/class/remoteproc")

    @property
    def firmware_search_path_param(self) -> Path:
        """The kernel parameter naming an extra directory the firmware loader searches first."""
        return self.path("/sys/module/firmware_class/parameters/path")

    @property
    def devicetree_base(self) -> Path:
        return self.path("/sys/firmware/devicetree/base")
