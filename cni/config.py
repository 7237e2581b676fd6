"""The plugin's section of the conflist: parsed, defaulted and validated before any work.

Standard library only. Unknown keys fail with code 2 (naming key and value), bad values with
code 7 naming the field, an unsupported `cniVersion` (or `cniVersions` without a supported
entry) with code 1.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

from cni.errors import INCOMPATIBLE_VERSION, INVALID_CONFIG, UNSUPPORTED_FIELD, CniError
from cni.names import is_dns_subdomain
from cni.request import SUPPORTED_VERSIONS, negotiate_version

PLUGIN_TYPE = "smarter-cni"

DEFAULT_BRIDGE = "smarter0"
# Clear of Docker (172.17/16, 172.18-31, 192.168), k3s (10.42/16, 10.43/16), flannel and
# kubeadm pods (10.244/16), kubeadm services (10.96/12), podman (10.88/16) and Calico.
DEFAULT_SUBNET = "10.210.0.0/16"
DEFAULT_MTU = 1500
DEFAULT_STATE_DIR = "/var/lib/smarter-cni"
SOCKET_NAME = "agent.sock"
DEFAULT_DOMAIN = "smarter.internal"

# Keys the spec or the runtime may put in any plugin's configuration.
_SPEC_KEYS = frozenset(
    {
        "cniVersion",
        "cniVersions",
        "name",
        "type",
        "args",
        "ipMasq",
        "runtimeConfig",
        "capabilities",
        "prevResult",
        "cni.dev/valid-attachments",
        "cni.dev/attachments",
        "disableCheck",
        "disableGC",
    }
)
_OWN_KEYS = frozenset(
    {"bridge", "subnet", "rangeStart", "rangeEnd", "gateway", "mtu", "dns", "stateDir"}
)
_DNS_KEYS = frozenset({"domain", "hostsDir", "upstream", "nameservers", "search", "options"})
_IFNAME = re.compile(r"[A-Za-z0-9_.\-]{1,15}")
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# resolv.conf(5) options: a name, and for ndots, timeout, attempts a number after ':'.
_RESOLVER_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9\-]*(:[0-9]+)?")


@dataclass(frozen=True)
class DnsConfig:
    domain: str
    hosts_dir: PurePosixPath
    upstream: tuple[str, ...]
    nameservers: tuple[str, ...]
    search: tuple[str, ...]
    options: tuple[str, ...]


@dataclass(frozen=True)
class NetConf:
    """One network as this plugin serves it."""

    cni_version: str
    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    range_start: ipaddress.IPv4Address
    range_end: ipaddress.IPv4Address
    mtu: int
    ip_masq: bool
    dns: DnsConfig
    state_dir: PurePosixPath
    prev_result: dict[str, Any] | None = None
    valid_attachments: frozenset[tuple[str, str]] | None = None
    key: str = field(default="", compare=False)

    @property
    def gateway_interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.gateway}/{self.subnet.prefixlen}")

    @property
    def socket_path(self) -> PurePosixPath:
        return agent_socket(self.state_dir)


def agent_socket(state_dir: PurePosixPath) -> PurePosixPath:
    """Where the agent listens: inside the state directory both sides share."""
    return state_dir / SOCKET_NAME


def parse(raw: dict[str, Any]) -> NetConf:
    """Validate `raw` (one plugin's configuration as the runtime passes it)."""
    _check_versions_list(raw)
    version = negotiate_version(raw) or ""
    if version not in SUPPORTED_VERSIONS:
        offered = f"cniVersion {raw.get('cniVersion', '')!r}"
        if "cniVersions" in raw:
            offered += f" and cniVersions {raw['cniVersions']!r}"
        raise CniError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            f"{offered}: none is one of {', '.join(SUPPORTED_VERSIONS)}",
        )
    for key in raw:
        if key not in _SPEC_KEYS and key not in _OWN_KEYS:
            raise CniError(
                UNSUPPORTED_FIELD,
                "unsupported field in network configuration",
                f"{key}={json.dumps(raw[key])}",
                hint=f"smarter-cni understands {', '.join(sorted(_OWN_KEYS))}",
            )
    name = raw.get("name", "")
    if not isinstance(name, str) or not _NETWORK_NAME.fullmatch(name):
        _invalid("name", name, "a network name (letters, digits, '_', '.', '-')")

    bridge = _string(raw, "bridge", DEFAULT_BRIDGE)
    if not _IFNAME.fullmatch(bridge):
        _invalid("bridge", bridge, "an interface name of 1-15 letters, digits, '_', '.', '-'")
    subnet = _subnet(raw)
    first_host = subnet.network_address + 1
    last_host = subnet.broadcast_address - 1
    gateway = _address(raw, "gateway", subnet, first_host)
    range_start = _address(raw, "rangeStart", subnet, first_host)
    range_end = _address(raw, "rangeEnd", subnet, last_host)
    if range_start > range_end:
        _invalid("rangeStart", str(range_start), f"an address at or before rangeEnd {range_end}")
    if range_start == range_end == gateway:
        _invalid("rangeEnd", str(range_end), "a range holding more than the gateway")
    mtu = raw.get("mtu", DEFAULT_MTU)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 576 <= mtu <= 65535:
        _invalid("mtu", mtu, "an integer from 576 to 65535")
    ip_masq = raw.get("ipMasq", True)
    if not isinstance(ip_masq, bool):
        _invalid("ipMasq", ip_masq, "true or false")
    state_dir = _absolute_path(raw, "stateDir", DEFAULT_STATE_DIR)
    return NetConf(
        cni_version=version,
        name=name,
        bridge=bridge,
        subnet=subnet,
        gateway=gateway,
        range_start=range_start,
        range_end=range_end,
        mtu=mtu,
        ip_masq=ip_masq,
        dns=_dns(raw.get("dns", {}), state_dir, gateway),
        state_dir=state_dir,
        prev_result=_prev_result(raw),
        valid_attachments=_valid_attachments(raw),
        key=json.dumps({k: raw.get(k) for k in sorted(_OWN_KEYS | {"ipMasq"})}, sort_keys=True),
    )


def _invalid(field_name: str, value: object, expected: str) -> NoReturn:
    raise CniError(
        INVALID_CONFIG,
        f"invalid network configuration field {field_name!r}",
        f"{field_name}={json.dumps(value)}: expected {expected}",
    )


def _check_versions_list(raw: dict[str, Any]) -> None:
    versions = raw.get("cniVersions")
    if versions is not None and (
        not isinstance(versions, list) or not all(isinstance(v, str) for v in versions)
    ):
        _invalid("cniVersions", versions, 'a list of CNI versions such as ["1.0.0", "1.1.0"]')


def _string(raw: dict[str, Any], key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        _invalid(key, value, "a non-empty string")
    return str(value)


def _subnet(raw: dict[str, Any]) -> ipaddress.IPv4Network:
    text = _string(raw, "subnet", DEFAULT_SUBNET)
    try:
        subnet = ipaddress.IPv4Network(text)
    except ValueError as error:
        _invalid("subnet", text, f"an IPv4 network in CIDR notation ({error})")
    if subnet.prefixlen > 30:
        _invalid("subnet", text, "a network of /30 or larger")
    return subnet


def _address(
    raw: dict[str, Any],
    key: str,
    subnet: ipaddress.IPv4Network,
    default: ipaddress.IPv4Address,
) -> ipaddress.IPv4Address:
    if key not in raw:
        return default
    text = raw[key]
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        _invalid(key, text, "an IPv4 address")
    if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
        _invalid(key, text, f"a host address inside subnet {subnet}")
    return address


def _absolute_path(raw: dict[str, Any], key: str, default: str) -> PurePosixPath:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value.startswith("/") or ".." in value.split("/"):
        _invalid(key, value, "an absolute path without '..'")
    return PurePosixPath(value)


def _dns(raw: object, state_dir: PurePosixPath, gateway: ipaddress.IPv4Address) -> DnsConfig:
    if not isinstance(raw, dict):
        _invalid("dns", raw, "an object")
    for key in raw:
        if key not in _DNS_KEYS:
            raise CniError(
                UNSUPPORTED_FIELD,
                "unsupported field in network configuration",
                f"dns.{key}={json.dumps(raw[key])}",
                hint=f"dns understands {', '.join(sorted(_DNS_KEYS))}",
            )
    domain = raw.get("domain", DEFAULT_DOMAIN)
    if not isinstance(domain, str) or not is_dns_subdomain(domain):
        _invalid("dns.domain", domain, "a DNS domain such as smarter.internal")
    hosts_dir = _absolute_path(
        {"dns.hostsDir": raw["hostsDir"]} if "hostsDir" in raw else {},
        "dns.hostsDir",
        str(state_dir / "hosts"),
    )
    upstream = _strings(raw, "upstream", ())
    for server in upstream:
        _check_upstream(server)
    nameservers = _strings(raw, "nameservers", (str(gateway),))
    for server in nameservers:
        _check_nameserver(server)
    search = _strings(raw, "search", (domain,))
    for suffix in search:
        # A trailing dot (fully qualified) is fine, as Kubernetes' dnsConfig allows.
        if not is_dns_subdomain(suffix[:-1] if suffix.endswith(".") else suffix):
            _invalid("dns.search", suffix, "DNS domains such as smarter.internal")
    options = _strings(raw, "options", ())
    for option in options:
        if not _RESOLVER_OPTION.fullmatch(option):
            _invalid("dns.options", option, "resolver options such as ndots:2 or edns0")
    return DnsConfig(
        domain=domain,
        hosts_dir=hosts_dir,
        upstream=upstream,
        nameservers=nameservers,
        search=search,
        options=options,
    )


def _strings(raw: dict[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        _invalid(f"dns.{key}", value, "a list of strings")
    return tuple(value)


def _check_nameserver(server: str) -> None:
    # The result's nameservers end up in the pod's resolv.conf: plain addresses, no port.
    try:
        ipaddress.ip_address(server)
    except ValueError:
        _invalid("dns.nameservers", server, "IPv4 or IPv6 addresses")


def _check_upstream(server: str) -> None:
    # dnsmasq's --server syntax, restricted to what we document: ADDRESS[#PORT].
    address, _, port = server.partition("#")
    try:
        ipaddress.ip_address(address)
        if port and not 0 < int(port) < 65536:
            raise ValueError(port)
    except ValueError:
        _invalid("dns.upstream", server, "IP addresses, optionally with #PORT")


def _prev_result(raw: dict[str, Any]) -> dict[str, Any] | None:
    value = raw.get("prevResult")
    if value is None:
        return None
    if not isinstance(value, dict):
        _invalid("prevResult", value, "a CNI result object")
    return dict(value)


def _valid_attachments(raw: dict[str, Any]) -> frozenset[tuple[str, str]] | None:
    key = (
        "cni.dev/valid-attachments"
        if "cni.dev/valid-attachments" in raw
        else ("cni.dev/attachments")
    )
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        _invalid(key, value, "a list of {containerID, ifname}")
    found = set()
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("containerID"), str):
            _invalid(key, entry, "{containerID, ifname} objects")
        found.add((entry["containerID"], str(entry.get("ifname", ""))))
    return frozenset(found)


def load_conflist(path: Path) -> dict[str, Any]:
    """Our plugin's configuration from a conflist file, as a runtime would pass it."""
    try:
        conflist = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CniError(INVALID_CONFIG, f"cannot read conflist {path}", str(error)) from None
    plugins = conflist.get("plugins") if isinstance(conflist, dict) else None
    if not isinstance(plugins, list):
        raise CniError(INVALID_CONFIG, f"{path} is not a conflist", "it has no 'plugins' list")
    _check_versions_list(conflist)
    for plugin in plugins:
        if isinstance(plugin, dict) and plugin.get("type") == PLUGIN_TYPE:
            merged = dict(plugin)
            # As a runtime does: the list's version (negotiated from cniVersions, CNI 1.1) and
            # name replace the plugin's own.
            if "cniVersion" in conflist or "cniVersions" in conflist:
                merged.pop("cniVersions", None)
                merged["cniVersion"] = negotiate_version(conflist) or conflist.get("cniVersion")
            merged["name"] = conflist.get("name", merged.get("name"))
            return merged
    raise CniError(INVALID_CONFIG, f"{path} has no plugin of type {PLUGIN_TYPE!r}")
