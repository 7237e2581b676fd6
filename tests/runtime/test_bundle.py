"""Reading a bundle and telling firmware from Linux programs, on real ELF files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime_handler import bundle
from runtime_handler.elf_check import classify
from runtime_handler.errors import FirmwareRefusedError, RuntimeCallError

from .conftest import BuildElf, MakeBundle, log_messages, runtime

X86_64_ELF = Path(os.path.realpath("/bin/true"))


def test_bundle_gives_args_env_annotations_and_rootfs(make_bundle: MakeBundle) -> None:
    path = make_bundle(
        ["/firmware.elf", "--flag"],
        env=["SMARTER_RPROC=remoteproc1", "A=b=c"],
        annotations={
            "io.kubernetes.cri.container-type": "container",
            "smarter-edge.io/board": "stm32mp157c-dk2",
        },
        root_path="../shared-rootfs",
    )
    loaded = bundle.load(str(path))
    assert loaded.args == ["/firmware.elf", "--flag"]
    assert loaded.env["A"] == "b=c"
    assert loaded.requested_core == "remoteproc1"
    assert loaded.board == "stm32mp157c-dk2"
    assert loaded.annotations["io.kubernetes.cri.container-type"] == "container"
    assert loaded.rootfs == str(path.parent / "shared-rootfs")
    assert loaded.declares_firmware


def test_missing_config_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeCallError, match=f"cannot read bundle config {tmp_path}/config.json"):
        bundle.load(str(tmp_path))


def test_symlinks_resolve_inside_the_rootfs(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "opt").mkdir(parents=True)
    (rootfs / "opt" / "fw.elf").write_bytes(b"x")
    (rootfs / "firmware.elf").symlink_to("/opt/fw.elf")
    (rootfs / "up").symlink_to("../../../../opt")
    assert bundle.resolve_in_rootfs(str(rootfs), "/firmware.elf") == str(rootfs / "opt/fw.elf")
    assert bundle.resolve_in_rootfs(str(rootfs), "/up/fw.elf") == str(rootfs / "opt/fw.elf")
    assert bundle.resolve_in_rootfs(str(rootfs), "/missing.elf") is None


def test_microcontroller_elf_is_firmware(make_bundle: MakeBundle, build_elf: BuildElf) -> None:
    path = make_bundle(["/app/blink"], {"/app/blink": build_elf("cortex-m4")})
    facts = classify(bundle.load(str(path)))
    assert facts is not None
    assert facts.arch == "v7E-M"
    assert facts.path == "/app/blink"


def test_entrypoint_without_slash_is_found_on_path(
    make_bundle: MakeBundle, build_elf: BuildElf
) -> None:
    on_path = make_bundle(["blink"], {"/usr/bin/blink": build_elf("cortex-m3")})
    assert classify(bundle.load(str(on_path))) is not None


def test_linux_program_is_for_runc(make_bundle: MakeBundle) -> None:
    path = make_bundle(["/bin/sh", "-c", "true"], busybox=True)
    assert classify(bundle.load(str(path))) is None


def test_arm_application_profile_elf_is_for_runc(
    make_bundle: MakeBundle, build_elf: BuildElf
) -> None:
    path = make_bundle(["/bin/app"], {"/bin/app": build_elf("cortex-a7", "-marm")})
    assert classify(bundle.load(str(path))) is None


def test_missing_program_that_is_not_declared_firmware_is_for_runc(
    make_bundle: MakeBundle,
) -> None:
    assert classify(bundle.load(str(make_bundle(["/nothing"])))) is None


def test_declared_firmware_that_is_missing_is_refused(make_bundle: MakeBundle) -> None:
    path = make_bundle(["/firmware.elf"])
    with pytest.raises(FirmwareRefusedError) as refused:
        classify(bundle.load(str(path)))
    assert str(refused.value).startswith(
        f"firmware container entrypoint /firmware.elf does not exist in the root filesystem"
        f" {path}/rootfs"
    )


def test_declared_firmware_that_is_x86_64_is_refused(make_bundle: MakeBundle) -> None:
    path = make_bundle(["/firmware.elf"], {"/firmware.elf": X86_64_ELF})
    with pytest.raises(FirmwareRefusedError) as refused:
        classify(bundle.load(str(path)))
    assert str(refused.value).startswith(
        "/firmware.elf is a 64-bit X86_64 ELF, not microcontroller firmware"
    )


def test_declared_firmware_that_is_not_elf_is_refused(make_bundle: MakeBundle) -> None:
    path = make_bundle(["/firmware.elf"], {"/firmware.elf": b"#!/bin/sh\necho hi\n"})
    with pytest.raises(FirmwareRefusedError, match=r"entrypoint /firmware\.elf is not an ELF file"):
        classify(bundle.load(str(path)))


def test_a_board_annotation_alone_leaves_a_linux_container_to_runc(
    make_bundle: MakeBundle,
) -> None:
    # containerd copies a pod's annotations to every container: sidecars carry the board too.
    path = make_bundle(["/bin/sh"], busybox=True, annotations={"board": "imx8mm-evk"})
    assert classify(bundle.load(str(path))) is None


def test_a_pod_sandbox_is_never_firmware(make_bundle: MakeBundle, build_elf: BuildElf) -> None:
    path = make_bundle(
        ["/firmware.elf"],
        {"/firmware.elf": build_elf("cortex-m4")},
        annotations={
            "io.kubernetes.cri.container-type": "sandbox",
            "smarter-edge.io/board": "smarter-edge,sim",
        },
    )
    assert classify(bundle.load(str(path))) is None


def test_elf_peek_reads_class_and_machine(build_elf: BuildElf) -> None:
    assert bundle.peek_elf(str(build_elf("cortex-m0"))) == (True, True)
    assert bundle.peek_elf(str(X86_64_ELF)) == (True, False)
    assert bundle.peek_elf("/etc/hostname") == (False, False)


@pytest.fixture(scope="module")
def arm_linux_programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """32-bit ARM programs as a Linux host has them: position-independent, dynamically linked."""
    work = tmp_path_factory.mktemp("arm-linux")
    gcc = ["arm-none-eabi-gcc", "-nostdlib", "-mcpu=cortex-a7"]
    loader = "-Wl,--dynamic-linker=/lib/ld-linux-armhf.so.3"
    (work / "lib.c").write_text("int f(void) { return 1; }\n")
    (work / "main.c").write_text("int f(void);\nvoid _start(void) { f(); for (;;) { } }\n")
    commands = {
        "pie": [*gcc, "-fPIE", "-pie", loader, "-o", "pie", "main.c", "lib.c"],
        "lib": [*gcc, "-shared", "-fPIC", "-o", "libf.so", "lib.c"],
        "dynamic": [*gcc, "-no-pie", loader, "-o", "dynamic", "main.c", "-L.", "-lf"],
    }
    for command in commands.values():
        subprocess.run(command, cwd=work, check=True, capture_output=True)
    return {"pie": work / "pie", "dynamic": work / "dynamic"}


@pytest.mark.parametrize("kind", ["pie", "dynamic"])
def test_an_arm_linux_program_is_told_from_firmware_without_pyelftools(
    make_bundle: MakeBundle, arm_linux_programs: dict[str, Path], kind: str
) -> None:
    program = arm_linux_programs[kind]
    assert bundle.peek_elf(str(program)) == (True, False)
    path = make_bundle(["/usr/bin/app"], {"/usr/bin/app": program})
    probe = subprocess.run(
        [
            sys.executable, "-c",
            "import sys\n"
            "from runtime_handler import bundle, elf_check\n"
            f"print(elf_check.classify(bundle.load({str(path)!r})), 'elftools' in sys.modules)",
        ],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert probe.stdout.split() == ["None", "False"]


def test_config_parses_as_json_would(runc_spec: dict[str, object]) -> None:
    text = "\n " + json.dumps(runc_spec, indent=2) + "\n"
    assert bundle.parse_json(text) == json.loads(text)
    assert bundle.parse_json('{"a": [1, 2.5, null, true, "\\u00e9"]}') == {
        "a": [1, 2.5, None, True, "é"]
    }


@pytest.mark.parametrize("text", ['{"a": 1} trailing', '{"a": ', "", "{bad}"])
def test_invalid_config_raises_jsons_error(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        bundle.parse_json(text)


def _firmware_config_with(make_bundle: MakeBundle, build_elf: BuildElf, change: str) -> Path:
    """A firmware bundle (it would run on a core) whose config.json is then made malformed."""
    bundle = make_bundle(
        ["/firmware.elf"], {"/firmware.elf": build_elf("cortex-m4")}, env=["SMARTER_RPROC=x"]
    )
    config = json.loads((bundle / "config.json").read_text())
    text = json.dumps(config)
    if change == "trailing comma":
        text = text[:-1] + ",}"
    elif change == "deep nesting":
        text = text[:-1] + ', "x": ' + "[" * 20000 + "]" * 20000 + "}"
    else:
        field, _, raw = change.partition("=")
        section, _, key = field.rpartition(".")
        (config[section] if section else config)[key] = json.loads(raw)
        text = json.dumps(config)
    (bundle / "config.json").write_text(text)
    return bundle


# What runc 1.1.5 says of each (checked with /usr/sbin/runc create).
MALFORMED = {
    "trailing comma": "invalid character '}' looking for beginning of object key string",
    "deep nesting": "invalid character '[' exceeded max depth",
    'process.env="PATH=/bin"': "json: cannot unmarshal string into Go struct field"
    " Process.process.env of type []string",
    'process.env=["A=1", 2]': "json: cannot unmarshal number into Go struct field"
    " Process.process.env of type string",
    'process.args="/firmware.elf"': "json: cannot unmarshal string into Go struct field"
    " Process.process.args of type []string",
    'process.terminal="no"': "json: cannot unmarshal string into Go struct field"
    " Process.process.terminal of type bool",
    'annotations=["a"]': "json: cannot unmarshal array into Go struct field Spec.annotations"
    " of type map[string]string",
    'root.path=5': "json: cannot unmarshal number into Go struct field Root.root.path of type"
    " string",
}


@pytest.mark.parametrize("change", list(MALFORMED))
def test_a_malformed_config_is_refused_in_runcs_words_never_a_traceback_or_ignored(
    make_bundle: MakeBundle, build_elf: BuildElf, runc_root: Path, change: str
) -> None:
    bundle = _firmware_config_with(make_bundle, build_elf, change)
    log = bundle / "log.json"
    result = runtime(
        "--root", str(runc_root), "--log", str(log), "--log-format", "json",
        "create", "--bundle", str(bundle), "bad",
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert log_messages(log) == [f"runc create failed: {MALFORMED[change]}"]
    assert list(runc_root.iterdir()) == []
