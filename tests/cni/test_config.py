"""Parsing the plugin's configuration: defaults, and refusals that name the field."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from cni import config
from cni.errors import CniError


def _raw(**fields: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "smarter", "type": "smarter-cni", **fields}


def _refusal(**fields: Any) -> CniError:
    with pytest.raises(CniError) as caught:
        config.parse(_raw(**fields))
    return caught.value


def test_type_alone_gives_working_defaults() -> None:
    conf = config.parse(_raw())
    assert conf.bridge == "smarter0"
    assert conf.subnet == ipaddress.IPv4Network("10.210.0.0/16")
    assert str(conf.gateway) == "10.210.0.1"
    assert (str(conf.range_start), str(conf.range_end)) == ("10.210.0.1", "10.210.255.254")
    assert conf.mtu == 1500 and conf.ip_masq is True
    assert conf.state_dir == PurePosixPath("/var/lib/smarter-cni")
    assert conf.dns.hosts_dir == PurePosixPath("/var/lib/smarter-cni/hosts")
    assert conf.dns.domain == "smarter.internal"
    assert conf.dns.nameservers == ("10.210.0.1",)
    assert conf.dns.upstream == ()
    assert conf.socket_path == PurePosixPath("/var/lib/smarter-cni/agent.sock")


def test_default_subnet_avoids_the_usual_container_networks() -> None:
    default = ipaddress.IPv4Network(config.DEFAULT_SUBNET)
    for taken in (
        "172.16.0.0/12",
        "10.42.0.0/16",
        "10.43.0.0/16",
        "10.244.0.0/16",
        "10.96.0.0/12",
        "10.88.0.0/16",
        "192.168.0.0/16",
        "10.0.0.0/16",
    ):
        assert not default.overlaps(ipaddress.IPv4Network(taken)), taken


def test_every_field_can_be_set() -> None:
    conf = config.parse(
        _raw(
            bridge="br-pods",
            subnet="10.99.8.0/24",
            gateway="10.99.8.254",
            rangeStart="10.99.8.10",
            rangeEnd="10.99.8.20",
            mtu=1400,
            ipMasq=False,
            stateDir="/run/smarter",
            dns={"domain": "gw.internal", "hostsDir": "/run/hosts", "upstream": ["1.1.1.1#53"]},
        )
    )
    assert (conf.bridge, str(conf.gateway), conf.mtu, conf.ip_masq) == (
        "br-pods",
        "10.99.8.254",
        1400,
        False,
    )
    assert (str(conf.range_start), str(conf.range_end)) == ("10.99.8.10", "10.99.8.20")
    assert conf.dns.hosts_dir == PurePosixPath("/run/hosts")
    assert conf.dns.search == ("gw.internal",)
    assert conf.dns.upstream == ("1.1.1.1#53",)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"subnet": "10.210.0.0/33"}, "subnet"),
        ({"subnet": "fd00::/64"}, "subnet"),
        ({"subnet": "10.0.0.0/31"}, "subnet"),
        ({"gateway": "10.211.0.1"}, "gateway"),
        ({"gateway": "10.210.0.0"}, "gateway"),
        ({"rangeStart": "10.210.9.9", "rangeEnd": "10.210.0.9"}, "rangeStart"),
        ({"mtu": "1500"}, "mtu"),
        ({"mtu": 100}, "mtu"),
        ({"bridge": "a-name-longer-than-15"}, "bridge"),
        ({"bridge": "../x"}, "bridge"),
        ({"stateDir": "relative/dir"}, "stateDir"),
        ({"stateDir": "/var/lib/../../etc"}, "stateDir"),
        ({"ipMasq": "yes"}, "ipMasq"),
        ({"dns": {"domain": "Not A Domain"}}, "dns.domain"),
        ({"dns": {"upstream": "8.8.8.8"}}, "dns.upstream"),
        ({"dns": {"upstream": ["8.8.8.8#99999"]}}, "dns.upstream"),
        ({"dns": {"hostsDir": "hosts"}}, "dns.hostsDir"),
        ({"dns": {"nameservers": ["dns.example"]}}, "dns.nameservers"),
        ({"dns": {"nameservers": ["10.210.0.1#53"]}}, "dns.nameservers"),
        ({"dns": {"nameservers": "10.210.0.1"}}, "dns.nameservers"),
        ({"dns": {"search": ["Not A Domain"]}}, "dns.search"),
        ({"dns": {"search": ["iot.svc..local"]}}, "dns.search"),
        ({"dns": {"search": ["a" * 64 + ".example"]}}, "dns.search"),
        ({"dns": {"options": ["ndots:two"]}}, "dns.options"),
        ({"dns": {"options": ["edns0 rotate"]}}, "dns.options"),
        ({"dns": {"options": ["timeout:1\nnameserver 6.6.6.6"]}}, "dns.options"),
        ({"dns": {"options": [""]}}, "dns.options"),
        ({"name": "bad name"}, "name"),
        ({"cniVersions": "1.1.0"}, "cniVersions"),
        ({"cniVersions": ["1.1.0", 1]}, "cniVersions"),
    ],
)
def test_invalid_value_is_code_7_naming_the_field(fields: dict[str, Any], named: str) -> None:
    error = _refusal(**fields)
    assert error.code == 7
    assert f"'{named}'" in error.msg
    assert error.details.startswith(f"{named}=")


def test_unknown_field_is_code_2_with_key_and_value() -> None:
    error = _refusal(ipam={"type": "host-local"})
    assert error.code == 2
    assert error.details == 'ipam={"type": "host-local"}'
    nested = _refusal(dns={"servers": ["1.1.1.1"]})
    assert (nested.code, nested.details) == (2, 'dns.servers=["1.1.1.1"]')


@pytest.mark.parametrize("version", ["0.3.1", "2.0.0", ""])
def test_unsupported_cni_version_is_code_1(version: str) -> None:
    raw = _raw()
    raw["cniVersion"] = version
    with pytest.raises(CniError) as caught:
        config.parse(raw)
    assert caught.value.code == 1


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_supported_versions_parse(version: str) -> None:
    assert config.parse({**_raw(), "cniVersion": version}).cni_version == version


def test_runtime_and_spec_keys_are_accepted() -> None:
    conf = config.parse(
        _raw(
            args={"cni": {"labels": []}},
            runtimeConfig={"portMappings": []},
            prevResult={"ips": []},
            **{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]},
        )
    )
    assert conf.valid_attachments == frozenset({("a", "eth0")})
    assert conf.prev_result == {"ips": []}


def test_conflist_gives_our_plugin_with_the_list_version_and_name(tmp_path: Path) -> None:
    path = tmp_path / "10-smarter.conflist"
    path.write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "smarter",
                "plugins": [{"type": "smarter-cni", "mtu": 1400}, {"type": "portmap"}],
            }
        )
    )
    assert config.load_conflist(path) == {
        "type": "smarter-cni",
        "mtu": 1400,
        "cniVersion": "1.0.0",
        "name": "smarter",
    }


def test_conflist_without_our_plugin_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.conflist"
    path.write_text(json.dumps({"cniVersion": "1.0.0", "name": "x", "plugins": []}))
    with pytest.raises(CniError, match="no plugin of type 'smarter-cni'"):
        config.load_conflist(path)


def test_deployed_conflist_is_valid_and_chains_portmap() -> None:
    path = Path(__file__).resolve().parents[2] / "deploy/cni/10-smarter.conflist"
    conflist = json.loads(path.read_text())
    assert (conflist["cniVersion"], conflist["name"]) == ("1.0.0", "smarter")
    assert [p["type"] for p in conflist["plugins"]] == ["smarter-cni", "portmap"]
    conf = config.parse(config.load_conflist(path))
    assert conf.bridge == "smarter0"


def test_dns_settings_for_the_result_accept_what_a_resolv_conf_takes() -> None:
    conf = config.parse(
        _raw(
            dns={
                "nameservers": ["10.210.0.1", "fd00::53"],
                "search": ["iot.smarter.internal", "smarter.internal."],
                "options": ["ndots:2", "edns0", "single-request-reopen", "timeout:1"],
            }
        )
    )
    assert conf.dns.nameservers == ("10.210.0.1", "fd00::53")
    assert conf.dns.search == ("iot.smarter.internal", "smarter.internal.")
    assert conf.dns.options == ("ndots:2", "edns0", "single-request-reopen", "timeout:1")


@pytest.mark.parametrize(
    ("versions", "chosen"),
    [
        (["1.0.0", "1.1.0"], "1.1.0"),
        (["0.4.0", "1.0.0", "1.1.0", "1.2.0", "2.0.0"], "1.1.0"),
        (["0.3.1", "0.4.0"], "0.4.0"),
        (["1.1.0", "1.0.0"], "1.1.0"),
    ],
)
def test_cni_versions_alone_speaks_the_highest_version_supported(
    versions: list[str], chosen: str
) -> None:
    raw = _raw(cniVersions=versions)
    del raw["cniVersion"]
    assert config.parse(raw).cni_version == chosen


def test_cni_versions_counts_cni_version_too_as_libcni_does() -> None:
    assert config.parse(_raw(cniVersions=["0.4.0"])).cni_version == "1.0.0"
    raw = _raw(cniVersions=["9.9.9"])
    raw["cniVersion"] = "0.4.0"
    assert config.parse(raw).cni_version == "0.4.0"


def test_cni_versions_with_no_supported_version_is_code_1() -> None:
    raw = _raw(cniVersions=["0.3.1", "2.0.0"])
    del raw["cniVersion"]
    with pytest.raises(CniError) as caught:
        config.parse(raw)
    assert caught.value.code == 1
    assert "cniVersions ['0.3.1', '2.0.0']" in caught.value.details


def test_conflist_with_only_cni_versions_loads_with_the_highest_supported(
    tmp_path: Path,
) -> None:
    path = tmp_path / "10-smarter.conflist"
    path.write_text(
        json.dumps(
            {
                "cniVersions": ["1.0.0", "1.1.0", "1.2.0"],
                "name": "smarter",
                "plugins": [{"type": "smarter-cni"}, {"type": "portmap"}],
            }
        )
    )
    loaded = config.load_conflist(path)
    assert loaded == {"type": "smarter-cni", "cniVersion": "1.1.0", "name": "smarter"}
    assert config.parse(loaded).cni_version == "1.1.0"


def test_version_command_speaks_the_negotiated_version() -> None:
    from cni import plugin

    stdin = json.dumps({"cniVersions": ["1.0.0", "1.1.0"], "name": "x", "type": "t"}).encode()
    status, output = plugin.execute({"CNI_COMMAND": "VERSION"}, stdin, plugin.nodes_under())
    assert (status, json.loads(output)["cniVersion"]) == (0, "1.1.0")
