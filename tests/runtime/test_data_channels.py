"""Which data channels a sidecar is given, and how its config.json carries them."""

from __future__ import annotations

import json
import os
import pty
from pathlib import Path

import pytest

from runtime_handler import data_channels, route, settings, state
from runtime_handler.bundle import Bundle
from runtime_handler.data_channels import Grant, container_paths, firmware_label, with_grants
from runtime_handler.errors import RuntimeCallError
from smarter_common.procfs import process_start_time
from smarter_common.remoteproc import CHANNEL_CHAR, CHANNEL_TTY, Channel, CoreChannels

SANDBOX = "a" * 64


def _channel(kind: str, number: int) -> Channel:
    name = f"ttyRPMSG{number}" if kind == CHANNEL_TTY else f"rpmsg{number}"
    return Channel(kind=kind, number=number, node=Path("/dev") / name, endpoint="virtio0.x")


def test_paths_count_tty_channels_after_the_console_and_char_endpoints_from_zero() -> None:
    channels = CoreChannels(
        console=_channel(CHANNEL_TTY, 3),
        data=(_channel(CHANNEL_TTY, 5), _channel(CHANNEL_TTY, 7), _channel(CHANNEL_CHAR, 0)),
    )
    assert [path for path, _ in container_paths("echo", channels)] == [
        "/dev/smarter/echo/tty1",
        "/dev/smarter/echo/tty2",
        "/dev/smarter/echo/rpmsg0",
    ]


def test_the_firmware_is_named_by_its_container_name_else_its_core() -> None:
    name = data_channels.ANNOTATION_CONTAINER_NAME
    assert firmware_label({name: "motor-control"}, "remoteproc0") == "motor-control"
    assert firmware_label({name: "../etc"}, "remoteproc0") == "remoteproc0"
    assert firmware_label({}, "remoteproc1") == "remoteproc1"


def test_a_grant_is_a_bind_mount_and_an_allow_rule_without_mknod(
    runc_spec: dict[str, object],
) -> None:
    grant = Grant("/dev/smarter/echo/tty1", "/dev/pts/7", 136, 7)
    config = with_grants(runc_spec, [grant])
    mounts = config["mounts"]
    assert isinstance(mounts, list)
    assert mounts[-1] == {
        "destination": "/dev/smarter/echo/tty1",
        "type": "bind",
        "source": "/dev/pts/7",
        "options": ["bind", "nosuid", "noexec"],
    }
    rules = config["linux"]["resources"]["devices"]  # type: ignore[index]
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert rules[-1] == {"allow": True, "type": "c", "major": 136, "minor": 7, "access": "rw"}
    assert "privileged" not in json.dumps(config)
    assert config["process"] == runc_spec["process"]


def test_granting_twice_adds_nothing_twice(runc_spec: dict[str, object]) -> None:
    grant = Grant("/dev/smarter/echo/tty1", "/dev/pts/7", 136, 7)
    once = with_grants(runc_spec, [grant])
    assert with_grants(once, [grant]) == once


def _record(root: Path, container_id: str, sandbox: str = SANDBOX) -> state.ContainerRecord:
    directory = Path(state.container_dir(str(root), container_id))
    directory.mkdir(parents=True)
    record = state.ContainerRecord(
        id=container_id, bundle="/b", rootfs="/b/rootfs", entrypoint="/firmware.elf",
        core="remoteproc0", firmware_name="f.elf", firmware_dir="/lib/firmware",
        lock_path="/run/x.lock", host_root="/", log=None, log_format="text",
        pid=os.getpid(), pid_start=process_start_time(os.getpid()),
        annotations={
            "io.kubernetes.cri.sandbox-id": sandbox,
            data_channels.ANNOTATION_CONTAINER_NAME: "echo",
        },
    )  # fmt: skip
    state.save(directory, record)
    return record


def test_a_pod_is_marked_while_it_holds_firmware_and_unmarked_after(tmp_path: Path) -> None:
    first, second = _record(tmp_path, "fw1"), _record(tmp_path, "fw2")
    assert not route.pod_holds_firmware(str(tmp_path), SANDBOX)
    data_channels.mark_pod(str(tmp_path), first)
    data_channels.mark_pod(str(tmp_path), second)
    assert route.pod_holds_firmware(str(tmp_path), SANDBOX)
    assert not route.pod_holds_firmware(str(tmp_path), "b" * 64)
    assert not route.pod_holds_firmware(str(tmp_path), "../" + SANDBOX)
    data_channels.unmark_pod(str(tmp_path), first)
    assert route.pod_holds_firmware(str(tmp_path), SANDBOX)
    data_channels.unmark_pod(str(tmp_path), second)
    assert not route.pod_holds_firmware(str(tmp_path), SANDBOX)
    assert os.listdir(state.containers_dir(str(tmp_path))) == ["fw1", "fw2"]


def test_a_pod_whose_firmware_has_stopped_refuses_its_sidecar_naming_the_core(
    tmp_path: Path,
) -> None:
    record = _record(tmp_path, "fw1")
    record.status, record.exit_code = state.STATUS_STOPPED, 3
    state.save(Path(state.container_dir(str(tmp_path), "fw1")), record)
    data_channels.mark_pod(str(tmp_path), record)
    with pytest.raises(RuntimeCallError, match=r"echo on remoteproc0 has stopped \(exit code 3\)"):
        data_channels.pod_firmware(str(tmp_path), SANDBOX)
    assert data_channels.pod_firmware(str(tmp_path), SANDBOX, refuse_stopped=False) == []


@pytest.mark.parametrize("text", ["-1", "x", "65", "1.5", "\u0661"])
def test_a_malformed_channel_count_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(RuntimeCallError, match="SMARTER_DATA_CHANNELS="):
        data_channels.wanted_channels(text)


def test_a_sidecar_is_refused_naming_the_core_when_no_data_channel_comes(
    tmp_path: Path,
) -> None:
    host = tmp_path / "host"
    core = host / "sys/class/remoteproc/remoteproc0"
    core.mkdir(parents=True)
    (core / "state").write_text("running\n")
    (host / "dev").mkdir()
    runtime_root = tmp_path / "root"
    record = _record(runtime_root, "fw1")
    data_channels.mark_pod(str(runtime_root), record)
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    config = {"annotations": {"io.kubernetes.cri.sandbox-id": SANDBOX,
                              "io.kubernetes.cri.container-type": "container"},
              "process": {"env": ["SMARTER_DATA_CHANNELS=1"]}}  # fmt: skip
    (bundle_dir / "config.json").write_text(json.dumps(config))
    settings.use(
        settings.Settings(
            {settings.HOST_ROOT_ENV: (str(host), ""), settings.CHANNEL_TIMEOUT_ENV: ("0.2", "")}
        )
    )
    try:
        with pytest.raises(RuntimeCallError) as refused:
            data_channels.give_to_sidecar(str(runtime_root), Bundle(str(bundle_dir), config))
    finally:
        settings.use(None)
    assert (
        "echo on remoteproc0 announced 0 of the 1 data channels the sidecar waits for"
        " (SMARTER_DATA_CHANNELS) within 0.2 s: tty1 is missing"
    ) in str(refused.value)
    assert json.loads((bundle_dir / "config.json").read_text()) == config
    # A sidecar that does not wait starts at once with what there is: nothing.
    config["process"] = {"env": []}
    (bundle_dir / "config.json").write_text(json.dumps(config))
    settings.use(settings.Settings({settings.HOST_ROOT_ENV: (str(host), "")}))
    try:
        sidecar = Bundle(str(bundle_dir), config)
        assert data_channels.give_to_sidecar(str(runtime_root), sidecar) == []
    finally:
        settings.use(None)


def test_a_sidecar_receives_the_pty_behind_a_simulated_channel(tmp_path: Path) -> None:
    host = tmp_path / "host"
    core = host / "sys/class/remoteproc/remoteproc0"
    (core / "virtio0/virtio0.rpmsg-tty.-1.1024").mkdir(parents=True)
    (core / "virtio0/virtio0.rpmsg-tty.-1.1025").mkdir(parents=True)
    (core / "state").write_text("running\n")
    (host / "dev").mkdir()
    masters = []
    for number, endpoint in ((0, "1024"), (1, "1025")):
        master, slave = pty.openpty()
        masters += [master, slave]
        tty = host / f"sys/class/tty/ttyRPMSG{number}"
        tty.mkdir(parents=True)
        os.symlink(core / f"virtio0/virtio0.rpmsg-tty.-1.{endpoint}", tty / "device")
        os.symlink(os.ttyname(slave), host / f"dev/ttyRPMSG{number}")
    data_pty = os.ttyname(masters[3])
    rdev = os.stat(data_pty).st_rdev
    runtime_root = tmp_path / "root"
    data_channels.mark_pod(str(runtime_root), _record(runtime_root, "fw1"))
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    config: dict[str, object] = {
        "annotations": {
            "io.kubernetes.cri.sandbox-id": SANDBOX,
            "io.kubernetes.cri.container-type": "container",
        }
    }
    (bundle_dir / "config.json").write_text(json.dumps(config))
    settings.use(settings.Settings({settings.HOST_ROOT_ENV: (str(host), "")}))
    try:
        grants = data_channels.give_to_sidecar(str(runtime_root), Bundle(str(bundle_dir), config))
    finally:
        settings.use(None)
        for fd in masters:
            os.close(fd)
    assert grants == [
        Grant("/dev/smarter/echo/tty1", data_pty, os.major(rdev), os.minor(rdev))
    ]
    written = json.loads((bundle_dir / "config.json").read_text())
    assert written["mounts"][0]["source"] == data_pty
