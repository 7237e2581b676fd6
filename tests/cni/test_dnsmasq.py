"""The dnsmasq command line `smarter-cni dns` runs (and prints)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cni import config, dnsmasq
from smarter_common.hostroot import HostRoot

REPO = Path(__file__).resolve().parents[2]


def _conf(**fields: object) -> config.NetConf:
    return config.parse({"cniVersion": "1.0.0", "name": "smarter", "type": "smarter-cni", **fields})


def test_dnsmasq_serves_the_hosts_directory_on_the_gateway_only() -> None:
    argv = dnsmasq.argv(_conf(dns={"upstream": ["192.0.2.53", "192.0.2.54#5353"]}))
    assert argv[0] == "/usr/sbin/dnsmasq"
    assert argv[1:] == [
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--log-facility=-",
        "--no-hosts",
        "--hostsdir=/var/lib/smarter-cni/hosts",
        "--listen-address=10.210.0.1",
        "--bind-dynamic",
        "--domain=smarter.internal",
        "--expand-hosts",
        "--local=/smarter.internal/",
        "--domain-needed",
        "--no-resolv",
        "--server=192.0.2.53",
        "--server=192.0.2.54#5353",
    ]


def test_without_upstreams_dnsmasq_uses_the_hosts_resolv_conf_under_the_host_root() -> None:
    argv = dnsmasq.argv(
        _conf(gateway="10.210.0.254", dns={"hostsDir": "/run/hosts"}),
        host_root=HostRoot(Path("/host")),
    )
    assert "--resolv-file=/host/etc/resolv.conf" in argv
    assert "--hostsdir=/host/run/hosts" in argv
    assert "--listen-address=10.210.0.254" in argv
    assert "--no-resolv" not in argv


def test_dns_print_shows_the_command_for_a_conflist(tmp_path: Path) -> None:
    conflist = tmp_path / "10-smarter.conflist"
    conflist.write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "smarter",
                "plugins": [{"type": "smarter-cni", "subnet": "10.77.0.0/24"}],
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "cni", "dns", "--conf", str(conflist), "--print"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert result.stdout.startswith("/usr/sbin/dnsmasq --keep-in-foreground ")
    assert "--listen-address=10.77.0.1" in result.stdout


def test_dns_with_an_invalid_conflist_says_what_is_wrong(tmp_path: Path) -> None:
    conflist = tmp_path / "bad.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "x", "plugins": []}))
    result = subprocess.run(
        [sys.executable, "-m", "cni", "dns", "--conf", str(conflist), "--print"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 1
    assert "has no plugin of type 'smarter-cni'" in result.stderr


def test_dns_refuses_to_start_when_dnsmasqs_user_cannot_read_the_hosts_directory() -> None:
    import shutil
    import tempfile

    # Under /tmp, not pytest's tmp_path: that is inside a mode-0700 directory of its own.
    tmp_path = Path(tempfile.mkdtemp(prefix="scni-dns-", dir="/tmp"))
    try:
        _refused_for_a_private_parent(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _refused_for_a_private_parent(tmp_path: Path) -> None:
    from testbed.netns import in_netns, network_namespace

    tmp_path.chmod(0o755)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    state = private / "state"
    conflist = tmp_path / "10-smarter.conflist"
    conflist.write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "smarter",
        "plugins": [{"type": "smarter-cni", "stateDir": str(state),
                     "dns": {"upstream": ["127.0.0.1#5399"]}}],
    }))  # fmt: skip
    # In a netns of its own: without the check, dnsmasq would start and serve nothing.
    with network_namespace("scn-dns-") as netns:
        result = in_netns(
            netns, sys.executable, "-m", "cni", "dns", "--conf", str(conflist),
            check=False, timeout=20,
        )  # fmt: skip
    assert result.returncode == 1, result
    assert result.stderr.strip() == (
        f"smarter-cni: dnsmasq runs as user nobody, which cannot read the hosts directory"
        f" {state}/hosts: it cannot enter or read {private} (let others enter it"
        f" (chmod o+rx {private}), or move stateDir or dns.hostsDir to a directory they can"
        " enter)"
    )
