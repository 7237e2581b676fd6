"""The launcher decides the create of a plain Linux container itself, as main() would.

Every container of every pod is created, so the launcher reads config.json and peeks at the
entrypoint without opening the archive; whatever may be firmware, or is a Linux container of a
pod holding firmware (it gets the pod's data channels), is left to main(). Each case is decided
by runtime_handler.route imported, and by the launcher of a built zipapp, whose create decision
is runtime_handler.bundle's as the build copied it past the launcher (as bytecode, and as source
for an interpreter of another bytecode); the bundle's launcher is itself bytecode (its head).
"""

from __future__ import annotations

import importlib.util
import json
import marshal
import os
import posixpath
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime_handler import bundle as bundle_module
from runtime_handler import route
from runtime_handler.route import PODS_DIRECTORY, STATE_DIRECTORY

from .conftest import BuildElf, MakeBundle, main_execs_runc

REPO = Path(__file__).resolve().parents[2]
LINUX_PROGRAM = Path(os.path.realpath("/bin/true"))
CRI_CONTAINER = {"io.kubernetes.cri.container-type": "container"}
IsRuncs = Callable[[list[str]], bool]



@pytest.fixture(scope="module")
def bundle_zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runtime as scripts/build_bundle.py builds it: its head is this interpreter's bytecode."""
    out = tmp_path_factory.mktemp("bundle-zipapp")
    spec = importlib.util.spec_from_file_location(
        "build_zipapps", REPO / "scripts/build_zipapps.py"
    )
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = builder
    spec.loader.exec_module(builder)
    builder.build_all(out, interpreter="/opt/smarter-edge/bin/python3",
                      interpreter_magic=importlib.util.MAGIC_NUMBER)  # fmt: skip
    runtime = out / "smarter-hybrid-runtime"
    assert b"marshal" in runtime.read_bytes().split(b"\n", 1)[0]
    return runtime


def _built_launcher(zipapp: Path, bytecode: bool) -> IsRuncs:
    """The built launcher's `is_runcs`: the file's head, run as its shebang runs it."""
    data = zipapp.read_bytes()
    line = data.split(b"\n", 1)[0]
    match = re.search(rb"\.read\((\d+)\)(?:\[(\d+):\])?", line)
    assert match, "the shebang names no head size"
    namespace: dict[str, object] = {"__name__": "built_launcher"}
    if match[2] is None:  # a source head
        exec(compile(data[: int(match[1])], str(zipapp), "exec"), namespace)
    else:
        exec(marshal.loads(data[int(match[2]) : int(match[1])]), namespace)
    if not bytecode:
        namespace["_IMPORT_SYSTEM"] = "an interpreter of another bytecode"
    decision = namespace["_create_decision"](str(zipapp))  # type: ignore[operator]
    # From the file's chunk, not runtime_handler.bundle imported (the launcher's fallback).
    assert decision.__globals__ is not vars(bundle_module)
    assert decision.__code__.co_filename == (
        "runtime_handler/bundle.py" if bytecode else str(zipapp)
    )
    built_is_runcs = namespace["is_runcs"]
    return lambda argv: built_is_runcs(argv, str(zipapp))  # type: ignore[operator]


@pytest.fixture(params=["imported", "built, bytecode", "built, source", "bundle's, bytecode head"])
def is_runcs(request: pytest.FixtureRequest) -> IsRuncs:
    if request.param == "imported":
        return route.is_runcs
    zipapp: Path = request.getfixturevalue(
        "bundle_zipapp" if request.param.startswith("bundle") else "zipapp"
    )
    return _built_launcher(zipapp, bytecode=request.param.endswith("bytecode head")
                           or request.param == "built, bytecode")  # fmt: skip


def _create(root: Path, bundle: Path, container_id: str = "c1") -> list[str]:
    return ["--root", str(root), "--log", str(root / "log.json"), "create", "--bundle",
            str(bundle), container_id]  # fmt: skip


def test_launcher_creates_a_linux_container_itself(
    tmp_path: Path, make_bundle: MakeBundle, is_runcs: IsRuncs
) -> None:
    bundle = make_bundle(["/bin/app"], {"/bin/app": LINUX_PROGRAM}, annotations=CRI_CONTAINER)
    argv = _create(tmp_path, bundle)
    assert is_runcs(argv)
    assert main_execs_runc(argv)


def test_launcher_finds_the_entrypoint_along_path_through_symlinks(
    tmp_path: Path, make_bundle: MakeBundle, is_runcs: IsRuncs
) -> None:
    # busybox's applets are symlinks to it; `sh` is found along the container's PATH.
    bundle = make_bundle(["sh", "-c", "true"], busybox=True)
    assert is_runcs(_create(tmp_path, bundle))
    assert bundle_module.entrypoint_path(str(bundle / "rootfs"), "/", "sh", "/usr/bin:/bin") == str(
        bundle / "rootfs/bin/busybox"
    )


def test_launcher_creates_a_sandbox_and_a_container_without_entrypoint_itself(
    tmp_path: Path, make_bundle: MakeBundle, is_runcs: IsRuncs
) -> None:
    sandbox = make_bundle(["/pause"], annotations={"io.kubernetes.cri.container-type": "sandbox"})
    assert is_runcs(_create(tmp_path, sandbox))
    assert is_runcs(_create(tmp_path, make_bundle(["/missing"])))
    assert is_runcs(_create(tmp_path, make_bundle([])))


def test_unreadable_bundle_goes_to_runc_as_main_sends_it(tmp_path: Path, is_runcs: IsRuncs) -> None:
    argv = _create(tmp_path, tmp_path / "no-bundle")
    assert is_runcs(argv)
    assert main_execs_runc(argv)


def test_relative_bundle_is_read_from_the_working_directory(
    tmp_path: Path, make_bundle: MakeBundle, monkeypatch: pytest.MonkeyPatch, is_runcs: IsRuncs
) -> None:
    bundle = make_bundle(["/bin/app"], {"/bin/app": b"#!/bin/sh\n"})
    monkeypatch.chdir(bundle.parent)
    assert is_runcs(["--root", str(tmp_path), "create", "-b", bundle.name, "c1"])
    # A config.json main() must judge (a trailing comma) shows the launcher read this one.
    (bundle / "config.json").write_text('{"process": {"args": ["/bin/app"],}}')
    assert not is_runcs(["--root", str(tmp_path), "create", f"--bundle={bundle.name}", "c1"])


def test_firmware_declared_or_looking_like_it_is_left_to_main(
    tmp_path: Path, make_bundle: MakeBundle, build_elf: BuildElf, is_runcs: IsRuncs
) -> None:
    declared = make_bundle(["/firmware.elf"], {"/firmware.elf": LINUX_PROGRAM})
    assert not is_runcs(_create(tmp_path, declared))
    fixed_address_arm = make_bundle(["/fw"], {"/fw": build_elf("cortex-m4")})
    assert not is_runcs(_create(tmp_path, fixed_address_arm))


def test_linux_container_of_a_pod_holding_firmware_is_left_to_main(
    tmp_path: Path, make_bundle: MakeBundle, is_runcs: IsRuncs
) -> None:
    annotations = {**CRI_CONTAINER, "io.kubernetes.cri.sandbox-id": "sb1"}
    sidecar = make_bundle(["/bin/app"], {"/bin/app": LINUX_PROGRAM}, annotations=annotations)
    assert is_runcs(_create(tmp_path, sidecar))
    (tmp_path / STATE_DIRECTORY / PODS_DIRECTORY / "sb1").mkdir(parents=True)
    assert not is_runcs(_create(tmp_path, sidecar))


@pytest.mark.parametrize(
    "config",
    [
        "[]",
        '{"process": ["/bin/app"]}',
        '{"process": {"args": ["/bin/app", 1]}}',
        '{"process": {"args": ["/bin/app"], "cwd": 5}}',
        '{"root": "rootfs", "process": {"args": ["/bin/app"]}}',
        '{"process": {"args": ["/bin/app"]}} trailing',
        '{"process": {"args": ["/bin/app"]},}',
    ],
)
def test_config_needing_more_than_a_look_is_left_to_main(
    tmp_path: Path, config: str, is_runcs: IsRuncs
) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "rootfs/bin").mkdir(parents=True)
    (bundle / "rootfs/bin/app").write_bytes(LINUX_PROGRAM.read_bytes())
    (bundle / "config.json").write_text(config)
    assert not is_runcs(_create(tmp_path, bundle))


def test_malformed_id_is_left_to_main(
    tmp_path: Path, make_bundle: MakeBundle, is_runcs: IsRuncs
) -> None:
    bundle = make_bundle(["/bin/app"], {"/bin/app": LINUX_PROGRAM})
    assert not is_runcs(_create(tmp_path, bundle, "../x"))
    assert not is_runcs(["--root", str(tmp_path), "create", "--bundle", str(bundle)])


@pytest.mark.parametrize(
    "path", ["/", "//", "///", "/a/./b/", "/a/../../b", "//a//b/..", "/a/b/../c/.", "/.."]
)
def test_normpath_is_posixpaths(path: str) -> None:
    assert bundle_module.normpath(path) == posixpath.normpath(path)


def test_scan_json_takes_only_whole_documents() -> None:
    assert bundle_module.scan_json(' {"a": [1, 2.5, null, true, "\\u00e9"]} ') == (
        True, json.loads('{"a": [1, 2.5, null, true, "\\u00e9"]}')
    )  # fmt: skip
    assert bundle_module.scan_json('{"a": 1} {}') == (False, None)
    assert bundle_module.scan_json("") == (False, None)
