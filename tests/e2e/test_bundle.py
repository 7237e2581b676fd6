"""The host-side bundle runs on a host with no python3 at all (scripts/build_bundle.py).

Every command runs in a private mount namespace of its own where each python3 of this machine is
hidden (an empty file over each interpreter, an empty tmpfs over each installation and venv) and
the bundle is at /opt/smarter-edge, the path a node has (testbed.hidden_python): what is built is
exactly what a node runs, with the default prefix.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smarter_common import __version__
from testbed.hidden_python import without_python
from tests.cni import harness

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/opt/smarter-edge"
PROGRAMS = ("smarter-cni", "smarter-hybrid-runtime")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "smarter-edge"
    subprocess.run(
        [sys.executable, str(REPO / "scripts/build_bundle.py"), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def _run(bundle: Path, *command: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run(
        without_python(bundle, *command),
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
        input=input,
    )


def test_no_python3_is_left_in_the_namespace(bundle: Path) -> None:
    probe = "for p in python3 python3.11 /usr/bin/python3; do $p -c 1 && exit 1; done; exit 0"
    result = _run(bundle, "sh", "-c", probe)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("program", PROGRAMS)
def test_program_answers_version_with_no_python_on_the_host(bundle: Path, program: str) -> None:
    result = _run(bundle, f"{PREFIX}/{program}", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{program} {__version__}"


@pytest.mark.parametrize("program", PROGRAMS)
def test_program_names_the_bundled_interpreter_by_absolute_path(bundle: Path, program: str) -> None:
    first_line = (bundle / program).read_bytes().split(b"\n", 1)[0]
    assert first_line.startswith(f"#!{PREFIX}/bin/python3 -IS".encode())
    assert len(first_line) <= 127  # what Linux passes to the interpreter whole


@pytest.mark.parametrize("program", PROGRAMS)
def test_program_runs_its_launcher_as_the_bundled_interpreters_bytecode(
    bundle: Path, program: str
) -> None:
    # Not source compiled at every exec (~1.3 ms for the runtime's launcher, ~2 ms for the CNI
    # plugin's): the head is the code object, marshal'd by an interpreter of the same magic.
    first_line = (bundle / program).read_bytes().split(b"\n", 1)[0]
    match = re.fullmatch(
        rf"#!{PREFIX}/bin/python3 -IScimport sys,marshal as m;"
        r'exec\(m\.loads\(open\(sys\.argv\[1\],"rb"\)\.read\((\d+)\)\[(\d+):\]\)\)'.encode(),
        first_line,
    )
    assert match, first_line
    load = (
        "import marshal,sys;d=open(sys.argv[1],'rb').read();"
        f"print(type(marshal.loads(d[{int(match[2])}:{int(match[1])}])).__name__)"
    )
    result = _run(bundle, f"{PREFIX}/bin/python3", "-IS", "-c", load, f"{PREFIX}/{program}")
    assert (result.returncode, result.stdout) == (0, "code\n"), result.stderr


def test_interpreter_starts_through_the_bundled_loader(bundle: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from build_bundle import elf_links
    finally:
        sys.path.remove(str(REPO / "scripts"))
    links = elf_links(bundle / "bin/python3")
    assert links.interpreter == f"{PREFIX}/lib/ld-linux-x86-64.so.2"
    assert links.search == (f"{PREFIX}/lib",)
    for soname in links.needed:
        assert (bundle / "lib" / soname).is_file(), soname
    # Every library the process maps comes from the bundle.
    maps = _run(bundle, f"{PREFIX}/bin/python3", "-IS", "-c", "import _ctypes, _socket, select;"
                "print(open('/proc/self/maps').read())")  # fmt: skip
    assert maps.returncode == 0, maps.stderr
    mapped = {line.split()[-1] for line in maps.stdout.splitlines() if ".so" in line}
    assert mapped and all(path.startswith(f"{PREFIX}/") for path in mapped), sorted(mapped)


def test_cni_version_with_no_python_on_the_host(bundle: Path) -> None:
    config = json.dumps({"cniVersion": "1.0.0", "name": "smarter", "type": "smarter-cni"})
    result = _run(bundle, "env", "CNI_COMMAND=VERSION", f"{PREFIX}/smarter-cni", input=config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]


def test_cni_add_and_del_of_a_pod_with_no_python_on_the_host(bundle: Path) -> None:
    plugin = without_python(bundle, f"{PREFIX}/smarter-cni")
    with harness.node() as node, harness.pods(1) as (pod,):
        added = node.add_pod(pod, "c1", "sensor-7xk2p", plugin=plugin)
        assert added.returncode == 0, added.stderr
        result = json.loads(added.stdout)
        assert result["ips"][0]["address"].startswith("10.210.")
        assert node.leases() and node.records()
        deleted = node.del_pod("c1", pod, plugin=plugin)
        assert deleted.returncode == 0, deleted.stderr
        assert node.leases() == [] and node.records() == []


def test_runtime_passes_runc_calls_through_with_no_python_on_the_host(
    bundle: Path, tmp_path: Path
) -> None:
    argv = ["--root", str(tmp_path), "--log", str(tmp_path / "log.json"), "state", "sb1"]
    result = _run(bundle, "env", "SMARTER_RUNC=/bin/echo", f"{PREFIX}/smarter-hybrid-runtime",
                  *argv)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == " ".join(argv) + "\n"


def test_runtime_passes_a_linux_containers_create_through_with_no_python_on_the_host(
    bundle: Path, tmp_path: Path
) -> None:
    # Decided by the launcher's create chunk, past its bytecode head.
    container = tmp_path / "bundle"
    (container / "rootfs/bin").mkdir(parents=True)
    shutil.copy2("/bin/true", container / "rootfs/bin/sh")
    config = {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
              "process": {"args": ["/bin/sh"], "cwd": "/", "env": ["PATH=/bin"]}}  # fmt: skip
    (container / "config.json").write_text(json.dumps(config))
    argv = ["--root", str(tmp_path), "create", "--bundle", str(container), "c1"]
    result = _run(bundle, "env", "SMARTER_RUNC=/bin/echo", f"{PREFIX}/smarter-hybrid-runtime",
                  *argv)  # fmt: skip
    assert (result.returncode, result.stdout) == (0, " ".join(argv) + "\n"), result.stderr


def test_runtime_reads_an_elf_with_no_python_on_the_host(bundle: Path) -> None:
    # pyelftools is imported only when the runtime reads an entrypoint, and imports pdb then.
    read = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        " from smarter_common.firmware_elf import read_elf_facts;"
        " print(read_elf_facts(__import__('pathlib').Path(sys.argv[2])).machine)"
    )
    result = _run(bundle, f"{PREFIX}/bin/python3", "-IS", "-c", read,
                  f"{PREFIX}/smarter-hybrid-runtime", f"{PREFIX}/bin/python3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_bundled_interpreter_has_libpython_built_in(bundle: Path) -> None:
    # Debian's static, PGO+LTO interpreter: a shared libpython costs ~10 ms per exec.
    assert not list((bundle / "lib").glob("libpython*")), sorted((bundle / "lib").iterdir())


def test_build_refuses_an_interpreter_it_cannot_run_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/build_bundle.py"), "--out", str(out),
         "--python", str(tmp_path / "python3.11")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot run {tmp_path / 'python3.11'}" in result.stderr
    assert "--python" in result.stderr
    assert sorted(tmp_path.iterdir()) == []


def test_build_refuses_an_interpreter_of_another_bytecode_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    # The launchers' heads are compiled here for the bundled interpreter: one of this version
    # with another magic number (a pre-release) would not load them.
    fake = tmp_path / "python3.11"
    version = (sys.version_info.major, sys.version_info.minor)
    paths = ("/usr/bin/python3.11", "/usr/lib/python3.11", "/usr/lib/python3.11")
    description = repr((version, b"\x00\x00\r\n", *paths))
    fake.write_text(f"#!/bin/sh\ncat <<'END'\n{description}\nEND\n")
    fake.chmod(0o755)
    out = tmp_path / "bundle"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/build_bundle.py"), "--out", str(out),
         "--python", str(fake)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{fake} is Python 3.{sys.version_info.minor} with bytecode magic" in result.stderr
    assert sorted(tmp_path.iterdir()) == [fake]


def test_build_refuses_an_interpreter_of_another_version(tmp_path: Path) -> None:
    others = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[02]*/bin/python3.1[02]")))
    if not others:
        pytest.skip("no Python 3.10 or 3.12 on this machine")
    out = tmp_path / "bundle"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/build_bundle.py"), "--out", str(out),
         "--python", others[0]],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{others[0]} is Python 3.1" in result.stderr, result.stderr
    assert "with bytecode magic" in result.stderr
    assert not out.exists()
