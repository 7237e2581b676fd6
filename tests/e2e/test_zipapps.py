"""The host-side zipapps run under Debian's python3 alone; their imports: test_fast_paths.py."""

from __future__ import annotations

import importlib.util
import json
import marshal
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from smarter_common import __version__

REPO = Path(__file__).resolve().parents[2]
HOST_PYTHON = "/usr/bin/python3"
PROGRAMS = ("smarter-cni", "smarter-hybrid-runtime")
# What the host has: no venv, no site-packages of ours on the path.
HOST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


@pytest.fixture(scope="module")
def zipapps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("host")
    subprocess.run(
        [sys.executable, str(REPO / "scripts/build_zipapps.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.mark.parametrize("program", PROGRAMS)
def test_zipapp_answers_version_under_the_host_python(zipapps: Path, program: str) -> None:
    result = subprocess.run(
        [HOST_PYTHON, "-I", str(zipapps / program), "--version"],
        capture_output=True,
        text=True,
        env=HOST_ENV,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{program} {__version__}"


@pytest.mark.parametrize("program", PROGRAMS)
def test_zipapp_is_an_executable_file_with_the_env_shebang(zipapps: Path, program: str) -> None:
    path = zipapps / program
    first_line = path.read_bytes().split(b"\n", 1)[0]
    assert first_line.startswith(b"#!/usr/bin/env -S python3 -I -S")
    assert len(first_line) < 128  # what every Linux kernel passes to the interpreter whole
    assert path.stat().st_mode & 0o111 == 0o111
    result = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, env=HOST_ENV, cwd="/"
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("program", "needed"),
    [
        ("smarter-cni", {"cni", "smarter_common", "pyroute2", "structlog"}),
        ("smarter-hybrid-runtime", {"runtime_handler", "smarter_common", "elftools", "structlog"}),
    ],
)
def test_zipapp_holds_its_packages_and_never_grpc(
    zipapps: Path, program: str, needed: set[str]
) -> None:
    with zipfile.ZipFile(zipapps / program) as archive:
        top_level = {name.split("/", 1)[0] for name in archive.namelist()}
    assert needed <= top_level
    assert not top_level & {"grpc", "google", "yaml", "_yaml", "watchdog"}


@pytest.mark.parametrize(
    ("program", "modules"),
    [
        ("smarter-cni", "pyroute2.iproute, structlog"),
        ("smarter-hybrid-runtime", "elftools.elf.elffile, structlog"),
    ],
)
def test_dependencies_import_from_the_zipapp_alone(
    zipapps: Path, program: str, modules: str
) -> None:
    probe = f"import sys; sys.path.insert(0, {str(zipapps / program)!r}); import {modules}"
    result = subprocess.run(
        [HOST_PYTHON, "-I", "-c", probe], capture_output=True, text=True, env=HOST_ENV, cwd="/"
    )
    assert result.returncode == 0, result.stderr


def test_build_is_deterministic(zipapps: Path, tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "scripts/build_zipapps.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for program in PROGRAMS:
        assert (tmp_path / program).read_bytes() == (zipapps / program).read_bytes(), program


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_zipapps", REPO / "scripts/build_zipapps.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_missing_package_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    builder = _builder()
    program = builder.Program("smarter-x", "nope.__main__", ("nope",), ())
    with pytest.raises(builder.BuildError, match=r"package nope not found in "):
        builder.build(program, tmp_path / "smarter-x")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_distribution_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    builder = _builder()
    program = builder.Program("smarter-x", "cni.__main__", ("cni",), ("no-such-dist",))
    with pytest.raises(builder.BuildError, match=r"no-such-dist is not installed"):
        builder.build(program, tmp_path / "smarter-x")
    assert list(tmp_path.iterdir()) == []


def test_a_program_that_would_ship_grpc_is_refused(tmp_path: Path) -> None:
    builder = _builder()
    program = builder.Program("smarter-x", "cni.__main__", ("cni",), ("grpcio",))
    with pytest.raises(builder.BuildError, match=r"would ship \['grpc'\]"):
        builder.build(program, tmp_path / "smarter-x")
    assert list(tmp_path.iterdir()) == []


def test_build_works_without_the_packaging_distribution(tmp_path: Path) -> None:
    # A fresh venv (the image build) has pip but not `packaging` on its path.
    script = REPO / "scripts/build_zipapps.py"
    probe = (
        "import runpy, sys; sys.modules['packaging'] = None; "
        f"sys.argv = [{str(script)!r}, '--out', {str(tmp_path)!r}]; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PROGRAMS)


def test_zipapps_install_themselves_into_a_debian_node_under_the_host_python(
    zipapps: Path, tmp_path: Path
) -> None:
    root = tmp_path / "host"
    (root / "etc/containerd").mkdir(parents=True)
    debian = (REPO / "tests/fixtures/containerd/debian-12.toml").read_text()
    (root / "etc/containerd/config.toml").write_text(debian)
    conflist = REPO / "deploy/cni/10-smarter.conflist"
    commands = [
        [str(zipapps / "smarter-cni"), "install", f"--host-root={root}",
         f"--plugin={zipapps / 'smarter-cni'}", f"--conflist={conflist}"],
        [str(zipapps / "smarter-hybrid-runtime"), "install-containerd-config",
         f"--host-root={root}"],
    ]  # fmt: skip
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, env=HOST_ENV, cwd="/")
        assert result.returncode == 0, result.stderr
    installed = root / "usr/lib/cni/smarter-cni"
    assert installed.read_bytes() == (zipapps / "smarter-cni").read_bytes()
    assert (root / "etc/cni/net.d/10-smarter.conflist").read_bytes() == conflist.read_bytes()
    config = (root / "etc/containerd/config.toml").read_text()
    assert config.startswith(debian)
    assert 'BinaryName = "/usr/local/bin/smarter-hybrid-runtime"' in config


# The bundle's programs (scripts/build_bundle.py) name their interpreter by absolute path, and
# their launchers' heads are that interpreter's bytecode when the #! line fits. Here the host's
# python3, named through a symlink whose path has the length a case needs, stands for it.
_BYTECODE_HEAD = re.compile(
    rb'^#!(\S+) -IScimport sys,marshal as m;exec\(m\.loads\(open\(sys\.argv\[1\],"rb"\)'
    rb"\.read\((\d+)\)\[(\d+):\]\)\)$"
)
_SOURCE_HEAD = re.compile(
    rb'^#!(\S+) -IScimport sys;exec\(open\(sys\.argv\[1\],"rb"\)\.read\(\d+\)\)$'
)


@pytest.fixture
def short_directory() -> Iterator[Path]:
    # tmp_path can be longer than a whole #! line.
    directory = Path(tempfile.mkdtemp(prefix="se", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def _interpreter_named(directory: Path, length: int) -> str:
    """A path of `length` characters naming the host's python3 (a symlink in `directory`)."""
    name = "p" * (length - len(str(directory)) - 1)
    assert name, f"{directory} is too long for a {length}-character interpreter path"
    (directory / name).symlink_to(os.path.realpath(HOST_PYTHON))
    return str(directory / name)


def _host_magic() -> bytes:
    probe = "import importlib.util,sys;sys.stdout.buffer.write(importlib.util.MAGIC_NUMBER)"
    return subprocess.run([HOST_PYTHON, "-I", "-S", "-c", probe], capture_output=True,
                          check=True).stdout  # fmt: skip


def _bundle_heads(directory: Path, interpreter: str) -> dict[str, bytes]:
    builder = _builder()
    builder.build_all(directory / "out", interpreter=interpreter, interpreter_magic=_host_magic())
    return {p: (directory / "out" / p).read_bytes().split(b"\n", 1)[0] for p in PROGRAMS}


def _assert_programs_answer(out: Path, tmp_path: Path) -> None:
    """Each program answers as the zipapps always have, started by its own #! line."""
    for program in PROGRAMS:
        result = subprocess.run([str(out / program), "--version"], capture_output=True,
                                text=True, env=HOST_ENV, cwd="/")  # fmt: skip
        assert (result.returncode, result.stdout) == (0, f"{program} {__version__}\n"), (
            result.stderr
        )
    argv = ["--root", str(tmp_path), "state", "sb1"]
    runc_env = {**HOST_ENV, "SMARTER_RUNC": "/bin/echo"}
    passed = subprocess.run([str(out / "smarter-hybrid-runtime"), *argv], capture_output=True,
                            text=True, env=runc_env, cwd="/")  # fmt: skip
    assert (passed.returncode, passed.stdout) == (0, " ".join(argv) + "\n"), passed.stderr
    config = '{"cniVersion": "1.0.0", "name": "smarter", "type": "smarter-cni"}'
    cni_env = {**HOST_ENV, "CNI_COMMAND": "VERSION"}
    version = subprocess.run([str(out / "smarter-cni")], input=config, capture_output=True,
                             text=True, env=cni_env, cwd="/")  # fmt: skip
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]


def test_bundle_head_is_the_launchers_bytecode_and_answers_as_before(
    short_directory: Path, tmp_path: Path
) -> None:
    interpreter = _interpreter_named(short_directory, 29)  # /opt/smarter-edge/bin/python3's
    heads = _bundle_heads(short_directory, interpreter)
    for program, line in heads.items():
        match = _BYTECODE_HEAD.match(line)
        assert match, (program, line)
        assert len(line) <= 127
        data = (short_directory / "out" / program).read_bytes()
        size, start = int(match[2]), int(match[3])
        assert start == len(line) + 1
        assert isinstance(marshal.loads(data[start:size]), types.CodeType)
    _assert_programs_answer(short_directory / "out", tmp_path)


def test_bundle_head_whose_bytecode_line_would_not_fit_falls_back_to_source(
    short_directory: Path, tmp_path: Path
) -> None:
    # A 50-character interpreter path (a long --prefix): the bytecode head's line would be
    # over 127 bytes, the source head's is not.
    interpreter = _interpreter_named(short_directory, 50)
    heads = _bundle_heads(short_directory, interpreter)
    for program, line in heads.items():
        assert _SOURCE_HEAD.match(line), (program, line)
        assert len(line) <= 127
    _assert_programs_answer(short_directory / "out", tmp_path)


def test_bundle_head_for_another_interpreters_bytecode_is_refused_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    builder = _builder()
    program = builder.PROGRAMS[1]
    refusal = (
        r"runs bytecode b'\\x00\\x00\\r\\n', but this build compiles .* run the build with a"
        r" Python of the bundled interpreter's version"
    )
    with pytest.raises(builder.BuildError, match=refusal):
        builder.build(program, tmp_path / program.name,
                      interpreter="/opt/smarter-edge/bin/python3",
                      interpreter_magic=b"\x00\x00\r\n")  # fmt: skip
    assert list(tmp_path.iterdir()) == []
