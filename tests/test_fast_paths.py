"""The exec'd fast paths import only what docs/contributing.md allows, run as the node runs them.

Each path is the built zipapp (scripts/build_zipapps.py) started by its own shebang's command,
under the host's python3, with `-X importtime` added (both heads: the host zipapps' source, and
the bundle's, the launcher as bytecode, here of the host's python3): every module the path
imports, up to the exec into runc or the exit, is listed, and must be in the path's allowed set
below (beyond what `python3 -I -S` loads by itself). The allowed sets are written here once; the
contributor page cites them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HOST_PYTHON = "/usr/bin/python3"
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

OURS = frozenset({"cni", "runtime_handler", "smarter_common"})
# What each path may import: our modules by name, the standard library's by package.
# `os` and what it loads; zlib inflates the archive's entries.
OS = frozenset({"os", "stat", "_stat", "posixpath", "genericpath", "_collections_abc"})
ZIPIMPORT = frozenset({"zlib"})
# `from __future__ import annotations` in our modules imports the (tiny) __future__ module.
FUTURE = frozenset({"__future__"})
# json and the modules it needs (re, enum, collections...): the CNI plugin's in-process commands.
JSON = frozenset(
    {
        "json", "_json", "re", "_sre", "copyreg", "enum", "types", "functools", "_functools",
        "collections", "_collections", "operator", "_operator", "itertools", "keyword",
        "reprlib",
    }
)  # fmt: skip
LAUNCHER_CREATE = frozenset({"_json"})
# kill of a firmware container: its record (runtime_handler.state, read by CPython's C JSON
# scanner), runc's signal names and one write on the supervisor's FIFO; kill -> stopped is a
# goal of issue 16.
FIRMWARE_KILL = (
    ZIPIMPORT | FUTURE | OS | {"_json"}
    | {"runtime_handler", "runtime_handler.__main__", "runtime_handler.route",
       "runtime_handler.runc_cli", "runtime_handler.passthrough", "runtime_handler.settings",
       "runtime_handler.errors", "runtime_handler.firmware_kill", "runtime_handler.signals",
       "runtime_handler.state"}
    | {"smarter_common", "smarter_common.errors", "smarter_common.atomic",
       "smarter_common.procfs"}
)  # fmt: skip
CNI_VERSION = frozenset(
    {"cni", "cni.client", "cni.plugin", "cni.errors", "cni.names", "cni.request"}
    | {"smarter_common", "smarter_common.errors"}
)

# The allowed set of each path, by name (docs/contributing.md, "What an exec'd path may import").
ALLOWED: dict[str, frozenset[str]] = {
    # The runtime's launcher execs runc for a sandbox's or sidecar's call: no import at all.
    "runtime launcher pass-through": frozenset(),
    # The CNI launcher hands the request to the agent: a unix socket and os, nothing else.
    "cni launcher via the agent": OS | {"_socket"},
    # create of a Linux container: the launcher runs runtime_handler.bundle's create decision
    # from the file's head (no archive opened), which reads config.json with CPython's C JSON
    # scanner and peeks at the entrypoint.
    "runtime create pass-through": LAUNCHER_CREATE,
    "runtime firmware kill": FIRMWARE_KILL,
    # VERSION is answered by the plugin itself, never by pyroute2 or structlog.
    "cni version in-process": ZIPIMPORT | FUTURE | OS | {"_socket"} | JSON | CNI_VERSION,
}


@dataclass
class Call:
    """One exec of a zipapp as the node makes it, and what it must answer (runc is /bin/echo)."""

    zipapp: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    stdout: bytes = b""
    # A module the path must import, so that a probe that sees nothing is not taken for a pass.
    sentinel: str | None = None


# The bundle's zipapps built as scripts/build_bundle.py builds them, naming the host's python3.
_BUNDLE_HEAD_BUILD = """\
import importlib.util, sys
sys.path.insert(0, sys.argv[1])
from build_zipapps import build_all
build_all(__import__("pathlib").Path(sys.argv[2]), interpreter=sys.argv[3],
          interpreter_magic=bytes.fromhex(sys.argv[4]))
"""


@pytest.fixture(scope="module", params=["host zipapps", "bundle's heads"])
def zipapps(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    out = tmp_path_factory.mktemp("host")
    if request.param == "host zipapps":
        command = [sys.executable, str(REPO / "scripts/build_zipapps.py"), "--out", str(out)]
    else:
        probe = "import importlib.util as u;print(u.MAGIC_NUMBER.hex())"
        magic = subprocess.run([HOST_PYTHON, "-I", "-S", "-c", probe], capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
        command = [sys.executable, "-c", _BUNDLE_HEAD_BUILD, str(REPO / "scripts"), str(out),
                   HOST_PYTHON, magic]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    if request.param != "host zipapps":
        assert b"marshal" in (out / "smarter-cni").read_bytes().split(b"\n", 1)[0]
    return out


def _bootstrap(zipapp: Path) -> str:
    """The code `zipapp`'s #! line runs: after ` -c ` (env's line), or after `-ISc` (a line
    naming its interpreter, whose options and code are one word)."""
    shebang = zipapp.read_bytes().split(b"\n", 1)[0].decode()
    if " -c " in shebang:
        return shebang.split(" -c ", 1)[1].strip("'")
    return shebang.split(" -ISc", 1)[1]


def _imports(call: Call, cwd: Path) -> tuple[subprocess.CompletedProcess[bytes], set[str]]:
    """Run `call` as its shebang does, plus `-X importtime`; its result and what it imported."""
    bootstrap = _bootstrap(call.zipapp)
    command = [HOST_PYTHON, "-I", "-S", "-X", "importtime", "-c", bootstrap, str(call.zipapp)]
    result = subprocess.run(
        [*command, *call.args],
        input=call.stdin,
        capture_output=True,
        env={**HOST_ENV, **call.env},
        cwd=cwd,
        check=False,
        timeout=60,
    )
    return result, _imported(result.stderr) - _at_start()


def _allows(allowed: frozenset[str], module: str) -> bool:
    """Our modules are allowed by name; a standard library package with its submodules."""
    top_level = module.split(".", 1)[0]
    return module in allowed or (top_level in allowed and top_level not in OURS)


def _imported(stderr: bytes) -> set[str]:
    lines = stderr.decode(errors="replace").splitlines()
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in lines
        if line.startswith("import time:") and not line.rstrip().endswith("imported package")
    }


def _at_start() -> set[str]:
    result = subprocess.run(
        [HOST_PYTHON, "-I", "-S", "-X", "importtime", "-c", "pass"],
        capture_output=True,
        env=HOST_ENV,
        check=True,
    )
    return _imported(result.stderr)


def _linux_bundle(directory: Path) -> Path:
    """A bundle whose entrypoint is this machine's `true`: a Linux program, runc's."""
    (directory / "rootfs/bin").mkdir(parents=True)
    shutil.copy2("/bin/true", directory / "rootfs/bin/sh")
    config = {
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/sh"], "cwd": "/", "env": ["PATH=/bin"]},
        "root": {"path": "rootfs"},
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@contextmanager
def _cni_agent(tmp_path: Path) -> Iterator[dict[str, object]]:
    """A smarter-cni agent in a network namespace of its own; the plugin config it serves."""
    from testbed.netns import network_namespace

    state = tmp_path / "state"
    plugin = {"type": "smarter-cni", "subnet": "10.211.0.0/24", "stateDir": str(state)}
    conflist = tmp_path / "10-smarter.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "smarter", "plugins": [plugin]}))
    with network_namespace("se-fp-") as netns:
        agent = subprocess.Popen(
            [
                "nsenter", f"--net=/run/netns/{netns}", "--",
                sys.executable, "-m", "cni", "agent", "--conf", str(conflist),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while not (state / "agent.sock").exists():
                assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
                assert time.monotonic() < deadline, "the agent did not open its socket"
                time.sleep(0.05)
            yield {"cniVersion": "1.0.0", "name": "smarter", **plugin}
        finally:
            agent.terminate()
            agent.wait(timeout=20)


def _needs_netns() -> None:
    if os.geteuid() != 0 or shutil.which("nsenter") is None:
        pytest.skip("the CNI agent runs in a network namespace: needs root and nsenter")


def _echoed(argv: list[str]) -> bytes:
    return (" ".join(argv) + "\n").encode()


def _runtime_pass_through(zipapps: Path, tmp: Path, stack: ExitStack, command: str) -> Call:
    args = {"state": ["sb1"], "kill": ["--all", "sb1", "9"], "delete": ["--force", "sb1"]}
    argv = ["--root", str(tmp), "--log", str(tmp / "log.json"), command, *args[command]]
    runtime = zipapps / "smarter-hybrid-runtime"
    return Call(runtime, argv, {"SMARTER_RUNC": "/bin/echo"}, stdout=_echoed(argv))


def _runtime_settings_file(zipapps: Path, tmp: Path, stack: ExitStack) -> Call:
    installed = tmp / "smarter-hybrid-runtime"
    shutil.copy2(zipapps / "smarter-hybrid-runtime", installed)
    settings = "# node 7\nSMARTER_START_TIMEOUT=20\nSMARTER_RUNC=/bin/echo\n"
    Path(f"{installed}.conf").write_text(settings)
    argv = ["--root", str(tmp), "state", "s1"]
    return Call(installed, argv, stdout=_echoed(argv))


def _runtime_create(zipapps: Path, tmp: Path, stack: ExitStack) -> Call:
    bundle = _linux_bundle(tmp / "bundle")
    argv = ["--root", str(tmp), "create", "--bundle", str(bundle), "c1"]
    runtime = zipapps / "smarter-hybrid-runtime"
    return Call(
        runtime, argv, {"SMARTER_RUNC": "/bin/echo"}, stdout=_echoed(argv),
        sentinel="_json",
    )  # fmt: skip


def _runtime_firmware_kill(zipapps: Path, tmp: Path, stack: ExitStack) -> Call:
    """kill TERM of a running firmware container: this test's process stands for its supervisor
    (a live PID whose start time the record holds) and holds its control FIFO open."""
    from runtime_handler import state
    from smarter_common.procfs import process_start_time

    directory = Path(state.container_dir(str(tmp), "fw1"))
    directory.mkdir(parents=True)
    record = state.ContainerRecord(
        id="fw1", bundle=str(tmp), rootfs=str(tmp / "rootfs"), entrypoint="/firmware.elf",
        core="remoteproc0", firmware_name="smarter-fw1.elf", firmware_dir=str(tmp),
        lock_path=str(tmp / "lock"), host_root="/", log=None, log_format="json",
        pid=os.getpid(), pid_start=process_start_time(os.getpid()), status=state.STATUS_RUNNING,
    )  # fmt: skip
    state.save(directory, record)
    fifo = directory / state.CONTROL_FIFO
    os.mkfifo(fifo, 0o600)
    supervisor_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    stack.callback(os.close, supervisor_end)
    argv = ["--root", str(tmp), "--log", str(tmp / "log.json"), "kill", "fw1", "TERM"]
    return Call(zipapps / "smarter-hybrid-runtime", argv, sentinel="runtime_handler.firmware_kill")


def _cni_version(zipapps: Path, tmp: Path, stack: ExitStack) -> Call:
    config = {"cniVersion": "1.0.0", "name": "smarter", "type": "smarter-cni"}
    answer = {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    return Call(
        zipapps / "smarter-cni", [], {"CNI_COMMAND": "VERSION"}, json.dumps(config).encode(),
        stdout=json.dumps(answer).encode(), sentinel="cni.request",
    )  # fmt: skip


def _cni_status_via_agent(zipapps: Path, tmp: Path, stack: ExitStack) -> Call:
    _needs_netns()
    config = stack.enter_context(_cni_agent(tmp))
    # Nothing from the archive may show: had the plugin done the work, cni.plugin would.
    env = {"CNI_COMMAND": "STATUS", "CNI_PATH": "/usr/lib/cni"}
    return Call(zipapps / "smarter-cni", [], env, json.dumps(config).encode())


# Each exec'd path: how to make the call, and which allowed set of ALLOWED holds it.
PATHS: dict[str, tuple[Callable[[Path, Path, ExitStack], Call], str]] = {
    "runtime state of a sandbox": (
        partial(_runtime_pass_through, command="state"), "runtime launcher pass-through"
    ),
    "runtime kill --all of a sandbox": (
        partial(_runtime_pass_through, command="kill"), "runtime launcher pass-through"
    ),
    "runtime delete --force of a sandbox": (
        partial(_runtime_pass_through, command="delete"), "runtime launcher pass-through"
    ),
    "runtime state, runc named by the settings file": (
        _runtime_settings_file, "runtime launcher pass-through"
    ),
    "runtime create of a Linux container": (_runtime_create, "runtime create pass-through"),
    "runtime kill of a firmware container": (_runtime_firmware_kill, "runtime firmware kill"),
    "cni VERSION": (_cni_version, "cni version in-process"),
    "cni STATUS answered by the agent": (_cni_status_via_agent, "cni launcher via the agent"),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_exec_path_imports_only_what_it_is_allowed(
    zipapps: Path, tmp_path: Path, path: str
) -> None:
    prepare, allowed_name = PATHS[path]
    allowed = ALLOWED[allowed_name]
    with ExitStack() as stack:
        call = prepare(zipapps, tmp_path, stack)
        result, imported = _imports(call, tmp_path)
    assert (result.returncode, result.stdout) == (0, call.stdout), result.stderr.decode()[-2000:]
    if call.sentinel is not None:
        assert call.sentinel in imported, "the probe did not see the program: it is blind"
    beyond = sorted(name for name in imported if not _allows(allowed, name))
    assert not beyond, f"{path} imports {beyond}, beyond what {allowed_name!r} allows"


# Run before the launcher: when it execs runc, says on stderr which archives zipimport has
# opened (it reads an archive's whole directory the first time an import searches a sys.path
# holding it, even for a standard extension such as `_json`).
_ZIPIMPORTERS_AT_EXEC = (
    "import sys\n"
    "def _at_exec(event, args):\n"
    "    if event == 'os.exec':\n"
    "        opened = [p for p, f in sys.path_importer_cache.items()"
    " if type(f).__name__ == 'zipimporter']\n"
    "        print('zipimporters', opened, file=sys.stderr, flush=True)\n"
    "sys.addaudithook(_at_exec)\n"
)


@pytest.mark.parametrize(
    "path", ["runtime create of a Linux container", "runtime state of a sandbox"]
)
def test_launcher_execs_runc_without_reading_the_archives_directory(
    zipapps: Path, tmp_path: Path, path: str
) -> None:
    prepare, _ = PATHS[path]
    with ExitStack() as stack:
        call = prepare(zipapps, tmp_path, stack)
    bootstrap = _bootstrap(call.zipapp)
    result = subprocess.run(
        [HOST_PYTHON, "-I", "-S", "-c", _ZIPIMPORTERS_AT_EXEC + bootstrap, str(call.zipapp),
         *call.args],
        capture_output=True, env={**HOST_ENV, **call.env}, cwd=tmp_path, check=False, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, call.stdout), result.stderr.decode()[-2000:]
    assert result.stderr.decode().splitlines() == ["zipimporters []"]
