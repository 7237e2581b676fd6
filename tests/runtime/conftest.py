"""Bundles, firmware and runtime invocations for the smarter-hybrid-runtime tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

RUNTIME = Path(sys.executable).parent / "smarter-hybrid-runtime"
RUNC = "/usr/sbin/runc"
REPO = Path(__file__).resolve().parents[2]

MakeBundle = Callable[..., Path]
BuildElf = Callable[..., Path]

_FIRMWARE_SOURCE = "void _start(void) { for (;;) { } }\n"


@pytest.fixture(scope="session")
def runc_spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    directory = tmp_path_factory.mktemp("spec")
    subprocess.run([RUNC, "spec", "--bundle", str(directory)], check=True)
    spec: dict[str, object] = json.loads((directory / "config.json").read_text())
    return spec


@pytest.fixture
def make_bundle(tmp_path: Path, runc_spec: dict[str, object]) -> MakeBundle:
    """A bundle directory: `files` maps container paths to host files or bytes."""
    counter = iter(range(1000))

    def _make(
        args: Sequence[str],
        files: Mapping[str, Path | bytes] | None = None,
        *,
        env: Sequence[str] = ("PATH=/usr/local/bin:/usr/bin:/bin",),
        annotations: Mapping[str, str] | None = None,
        busybox: bool = False,
        root_path: str = "rootfs",
    ) -> Path:
        bundle = tmp_path / f"bundle{next(counter)}"
        rootfs = bundle / root_path
        rootfs.mkdir(parents=True)
        if busybox:
            (rootfs / "bin").mkdir()
            shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
            for tool in ("sh", "echo", "sleep", "cat", "true"):
                (rootfs / "bin" / tool).symlink_to("busybox")
        for container_path, content in (files or {}).items():
            target = rootfs / container_path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                shutil.copy2(content, target)
        config = json.loads(json.dumps(runc_spec))
        process = config["process"]
        process["terminal"] = False
        process["args"] = list(args)
        process["env"] = list(env)
        config["root"] = {"path": root_path, "readonly": False}
        config["annotations"] = dict(annotations or {})
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        return bundle

    return _make


@pytest.fixture(scope="session")
def build_elf(tmp_path_factory: pytest.TempPathFactory) -> BuildElf:
    """A minimal ARM ELF built for `cpu` with Debian's arm-none-eabi-gcc."""
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        pytest.fail("arm-none-eabi-gcc is missing: run scripts/setup.sh")
    workdir = tmp_path_factory.mktemp("elf")
    source = workdir / "start.c"
    source.write_text(_FIRMWARE_SOURCE)

    def _build(cpu: str, *extra: str) -> Path:
        out = workdir / f"{cpu}{''.join(extra)}.elf"
        if not out.exists():
            flags = [f"-mcpu={cpu}", *extra]
            if "-marm" not in extra:
                flags.append("-mthumb")
            subprocess.run([gcc, *flags, "-nostdlib", "-o", str(out), str(source)], check=True)
        return out

    return _build


def runtime(
    *args: str, env: Mapping[str, str] | None = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run smarter-hybrid-runtime with `args`, as the shim would."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(RUNTIME), *args],
        env=None if env is None else dict(env),
        capture_output=kwargs.pop("capture_output", True),
        text=True,
        check=False,
        timeout=60,
        **kwargs,
    )


@pytest.fixture
def runc_root(tmp_path: Path) -> Iterator[Path]:
    """A runc --root of the test's own; containers left in it are deleted by id afterwards."""
    root = tmp_path / "runc-root"
    root.mkdir()
    yield root
    for entry in root.iterdir():
        if entry.name != "smarter-hybrid" and (entry / "state.json").exists():
            subprocess.run(
                [RUNC, "--root", str(root), "delete", "--force", entry.name],
                capture_output=True,
                check=False,
            )


def log_messages(log: Path) -> list[str]:
    """The `msg` of every error entry in a runtime log in runc's JSON format."""
    if not log.exists():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [entry["msg"] for entry in entries if entry.get("level") == "error"]


# A host's PATH, as containerd's shim runs the runtime with it.
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def main_execs_runc(argv: list[str]) -> bool:
    """Whether runtime_handler.__main__.main(), run as a program, hands `argv` to runc."""
    result = subprocess.run(
        [sys.executable, "-I", "-m", "runtime_handler", *argv],
        capture_output=True,
        text=True,
        env={**HOST_ENV, "SMARTER_RUNC": "/bin/echo"},
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    return result.stdout == " ".join(argv) + "\n"


@pytest.fixture(scope="module")
def zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runtime's zipapp as scripts/build_zipapps.py builds it for a node."""
    out = tmp_path_factory.mktemp("zipapp")
    subprocess.run(
        [sys.executable, str(REPO / "scripts/build_zipapps.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out / "smarter-hybrid-runtime"
