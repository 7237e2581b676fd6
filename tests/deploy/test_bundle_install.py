"""Both installers put the host-side bundle at the prefix it was built for, file by file by rename.

The bundles here are small stand-ins laid out as scripts/build_bundle.py lays one out; the real
one, installed by the installers and run with every python3 hidden, is tests/e2e/test_bundle.py's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from cni import install as cni_install
from runtime_handler import containerd_config
from smarter_common import bundle_install, containerd
from smarter_common.bundle_install import BundleError
from smarter_common.hostroot import HostRoot

REPO = Path(__file__).resolve().parents[2]
CONFLIST = REPO / "deploy" / "cni" / "10-smarter.conflist"
PREFIX = "/opt/smarter-edge"
DEBIAN_CONFIG = """\
version = 2

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "/etc/cni/net.d"
"""


def _bundle(where: Path, prefix: str = PREFIX, *, version: bytes = b"1") -> Path:
    bundle = where / "bundle"
    for name in bundle_install.PROGRAMS:
        _write(bundle / name, f"#!{prefix}/bin/python3 -IS\n".encode() + b"PK zip " + version)
    _write(bundle / "bin/python3", b"\x7fELF interpreter " + version)
    _write(bundle / "lib/ld-linux-x86-64.so.2", b"\x7fELF loader")
    _write(bundle / "lib/python3.11/os.py", b"# landmark", mode=0o644)
    _write(bundle / "lib/python3.11/json/__init__.pyc", b"bytecode " + version, mode=0o644)
    return bundle


def _write(path: Path, data: bytes, *, mode: int = 0o755) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _node(tmp_path: Path) -> HostRoot:
    root = tmp_path / "host"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_text(DEBIAN_CONFIG)
    return HostRoot(root)


def _tree(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mode & 0o777)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_the_bundle_lands_whole_at_the_prefix_its_programs_name(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "/opt/vendor/edge")
    root = _node(tmp_path)
    installed = bundle_install.install_bundle(root, bundle)
    assert installed == bundle_install.BundleInstalled(
        PurePosixPath("/opt/vendor/edge"), written=6, unchanged=0
    )
    assert _tree(root.path("/opt/vendor/edge")) == _tree(bundle)
    assert not root.path(PREFIX).exists()


def test_a_second_install_writes_nothing(tmp_path: Path) -> None:
    bundle, root = _bundle(tmp_path), _node(tmp_path)
    bundle_install.install_bundle(root, bundle)
    inodes = {p: p.stat().st_ino for p in root.path(PREFIX).rglob("*")}
    again = bundle_install.install_bundle(root, bundle)
    assert (again.written, again.unchanged) == (0, 6)
    assert {p: p.stat().st_ino for p in root.path(PREFIX).rglob("*")} == inodes


def test_a_running_program_keeps_the_interpreter_it_opened_across_an_update(
    tmp_path: Path,
) -> None:
    root = _node(tmp_path)
    bundle_install.install_bundle(root, _bundle(tmp_path / "old"))
    python = root.path(f"{PREFIX}/bin/python3")
    with python.open("rb") as running:
        updated = bundle_install.install_bundle(root, _bundle(tmp_path / "new", version=b"2"))
        assert running.read() == b"\x7fELF interpreter 1"
    assert updated.written == 4  # the two programs, the interpreter and one module changed
    assert python.read_bytes() == b"\x7fELF interpreter 2"
    assert sorted(p.name for p in python.parent.iterdir()) == ["python3"]  # no temporary left


def test_the_interpreter_is_installed_after_what_it_loads(tmp_path: Path) -> None:
    order = [str(p) for p in bundle_install.bundle_files(_bundle(tmp_path))]
    assert order[-1] == "bin/python3"
    assert order.index("lib/ld-linux-x86-64.so.2") < order.index("bin/python3")


def _without_interpreter(bundle: Path) -> str:
    (bundle / "bin/python3").unlink()
    return "is not a host-side bundle: it has no bin/python3"


def _zipapp_on_the_hosts_python(bundle: Path) -> str:
    (bundle / "smarter-cni").write_bytes(b"#!/usr/bin/env -S python3 -IS\nPK")
    return "smarter-cni does not start its bundle's interpreter"


def _programs_of_two_prefixes(bundle: Path) -> str:
    (bundle / "smarter-cni").write_bytes(b"#!/opt/other/bin/python3 -IS\nPK")
    return "name different interpreters"


def _a_link_out_of_the_bundle(bundle: Path) -> str:
    (bundle / "lib/libc.so.6").symlink_to("/etc/shadow")
    return "libc.so.6 is not a regular file"


@pytest.mark.parametrize(
    "spoil",
    [
        _without_interpreter,
        _zipapp_on_the_hosts_python,
        _programs_of_two_prefixes,
        _a_link_out_of_the_bundle,
    ],
)
def test_what_is_not_a_bundle_is_refused_and_nothing_is_written(
    tmp_path: Path, spoil: Callable[[Path], str]
) -> None:
    bundle, root = _bundle(tmp_path), _node(tmp_path)
    message = spoil(bundle)
    with pytest.raises(BundleError) as refused:
        bundle_install.install_bundle(root, bundle)
    assert message in str(refused.value)
    assert not root.path("/opt").exists()


def test_cni_install_puts_the_bundle_before_the_plugin_that_runs_on_it(tmp_path: Path) -> None:
    bundle, root = _bundle(tmp_path), _node(tmp_path)
    status = cni_install.main(
        [f"--host-root={root.root}", f"--plugin={bundle / 'smarter-cni'}",
         f"--conflist={CONFLIST}", f"--bundle={bundle}"]
    )  # fmt: skip
    assert status == 0
    assert _tree(root.path(PREFIX)) == _tree(bundle)
    plugin = root.path("/usr/lib/cni/smarter-cni")
    assert plugin.read_bytes() == (bundle / "smarter-cni").read_bytes()
    assert os.stat(plugin).st_mode & 0o777 == 0o755


def test_cni_install_refuses_a_plugin_that_does_not_run_on_the_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, root = _bundle(tmp_path), _node(tmp_path)
    zipapp = tmp_path / "smarter-cni"
    zipapp.write_bytes(b"#!/usr/bin/env -S python3 -IS\nPK")
    status = cni_install.main(
        [f"--host-root={root.root}", f"--plugin={zipapp}", f"--conflist={CONFLIST}",
         f"--bundle={bundle}"]
    )  # fmt: skip
    assert status == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"smarter-cni install: {zipapp} does not start its bundle's")
    assert not root.path("/opt").exists() and not root.path("/usr").exists()


def test_cni_install_refuses_a_directory_that_is_not_a_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, root = _bundle(tmp_path), _node(tmp_path)
    status = cni_install.main(
        [f"--host-root={root.root}", f"--plugin={bundle / 'smarter-cni'}",
         f"--conflist={CONFLIST}", f"--bundle={tmp_path}"]
    )  # fmt: skip
    assert status == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{tmp_path} is not a host-side bundle: it has no smarter-cni" in line
    assert not root.path("/opt").exists() and not root.path("/usr").exists()


def test_runtime_installer_puts_the_bundle_then_the_runtime_then_the_config(
    tmp_path: Path,
) -> None:
    bundle, root = _bundle(tmp_path), _node(tmp_path)
    argv = [f"--host-root={root.root}", f"--bundle={bundle}"]
    assert containerd_config.main(argv) == 0
    assert _tree(root.path(PREFIX)) == _tree(bundle)
    runtime = root.path(containerd_config.BINARY)
    assert runtime.read_bytes() == (bundle / "smarter-hybrid-runtime").read_bytes()
    assert os.stat(runtime).st_mode & 0o777 == 0o755
    document = containerd.parse_config(
        root.path(containerd.CONTAINERD_CONFIG).read_text(), source="config.toml"
    )
    hybrid = containerd.lookup(
        document, (*containerd.cri_runtime_plugin(2), "containerd", "runtimes", "hybrid")
    )
    assert hybrid["options"]["BinaryName"] == containerd_config.BINARY
    inode = runtime.stat().st_ino
    assert containerd_config.main(argv) == 0  # again: nothing to do
    assert runtime.stat().st_ino == inode


def test_runtime_installer_refuses_a_directory_that_is_not_a_bundle_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _node(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert containerd_config.main([f"--host-root={root.root}", f"--bundle={empty}"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"smarter-hybrid-runtime install-containerd-config: {empty} is not a host-side bundle"
    )
    assert root.path(containerd.CONTAINERD_CONFIG).read_text() == DEBIAN_CONFIG
    assert not root.path("/opt").exists() and not root.path("/usr").exists()
