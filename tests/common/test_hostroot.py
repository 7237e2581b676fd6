from pathlib import Path, PurePosixPath

import pytest

from smarter_common.errors import HostPathError
from smarter_common.hostroot import HOST_ROOT_ENV, HostRoot


def test_default_root_is_slash() -> None:
    assert HostRoot.from_env(environ={}).path("/sys/class/remoteproc") == Path(
        "/sys/class/remoteproc"
    )


def test_env_sets_root_and_flag_overrides_env(tmp_path: Path) -> None:
    env = {HOST_ROOT_ENV: str(tmp_path / "env")}
    assert HostRoot.from_env(environ=env).dev == tmp_path / "env" / "dev"
    assert HostRoot.from_env(tmp_path / "flag", environ=env).dev == tmp_path / "flag" / "dev"


def test_well_known_paths_live_under_the_root(tmp_path: Path) -> None:
    host = HostRoot(tmp_path)
    assert host.remoteproc_class == tmp_path / "sys/class/remoteproc"
    assert host.lib_firmware == tmp_path / "lib/firmware"
    assert host.firmware_search_path_param == tmp_path / "sys/module/firmware_class/parameters/path"
    assert host.run == tmp_path / "run"


def test_dotdot_cannot_escape_the_root(tmp_path: Path) -> None:
    with pytest.raises(HostPathError, match=r"contains '\.\.'"):
        HostRoot(tmp_path).path("/dev/../../etc/passwd")


def test_to_host_inverts_path(tmp_path: Path) -> None:
    host = HostRoot(tmp_path)
    assert host.to_host(host.path("/dev/ttyUSB0")) == PurePosixPath("/dev/ttyUSB0")
    with pytest.raises(HostPathError, match="outside the host root"):
        host.to_host(Path("/elsewhere"))
