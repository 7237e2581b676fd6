"""Outbound masquerade for the pod subnet: one iptables chain for the network, not one per pod.

nat POSTROUTING  -s <subnet> -j SMARTER-CNI
nat SMARTER-CNI  -d <subnet> -j RETURN        (pod to pod: keep the source)
nat SMARTER-CNI  -j MASQUERADE                (everything else leaves as the node)
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

from cni.errors import NETWORK_SETUP_FAILED, TRY_AGAIN_LATER, CniError
from smarter_common.locks import FileLock

CHAIN = "SMARTER-CNI"
_COMMENT = "smarter-cni: masquerade pod traffic leaving the node"
_LOCK_WAIT_SECONDS = "5"
# iptables' exit status for "resource problem": the xtables lock not won within -w, or (nft
# backend) the ruleset changing under it. Both pass; the runtime retries on code 11.
_RESOURCE_PROBLEM = 4
_TRANSIENT = ("xtables lock", "Resource temporarily unavailable", "Device or resource busy")


def jump_rule(subnet: ipaddress.IPv4Network) -> list[str]:
    return ["POSTROUTING", "-s", str(subnet), "-m", "comment", "--comment", _COMMENT, "-j", CHAIN]


def chain_rules(subnet: ipaddress.IPv4Network) -> list[list[str]]:
    """The chain's rules, in order, as `iptables -t nat -A` arguments."""
    return [[CHAIN, "-d", str(subnet), "-j", "RETURN"], [CHAIN, "-j", "MASQUERADE"]]


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `iptables -t nat ARGS`; CniError 11 when iptables is busy rather than failing."""
    try:
        result = subprocess.run(
            ["iptables", "-w", _LOCK_WAIT_SECONDS, "-t", "nat", *args],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as error:
        raise CniError(
            NETWORK_SETUP_FAILED, "cannot run iptables", str(error), hint="install iptables"
        ) from error
    if is_transient_failure(result.returncode, result.stderr):
        raise CniError(
            TRY_AGAIN_LATER,
            "iptables is busy",
            f"{' '.join(map(str, result.args))}: {result.stderr.strip()}",
            hint=f"another program held the xtables lock for over {_LOCK_WAIT_SECONDS}s",
        )
    return result


def is_transient_failure(returncode: int, stderr: str) -> bool:
    """Whether an iptables failure is contention that goes away (lock held, EAGAIN, EBUSY)."""
    return returncode == _RESOURCE_PROBLEM or (
        returncode != 0 and any(sign in stderr for sign in _TRANSIENT)
    )


def _listed_rules() -> list[str] | None:
    listing = _iptables("-S", CHAIN)
    if listing.returncode != 0:
        return None
    return [line for line in listing.stdout.splitlines() if line.startswith("-A ")]


def is_present(subnet: ipaddress.IPv4Network) -> bool:
    expected = [f"-A {' '.join(rule)}" for rule in chain_rules(subnet)]
    return _listed_rules() == expected and _iptables("-C", *jump_rule(subnet)).returncode == 0


def ensure(subnet: ipaddress.IPv4Network, lock_path: Path) -> None:
    """Install the rule set unless it is already exactly there (idempotent, serialised)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path):
        expected = [f"-A {' '.join(rule)}" for rule in chain_rules(subnet)]
        listed = _listed_rules()
        if listed is None:
            _check(_iptables("-N", CHAIN))
        if listed != expected:
            _check(_iptables("-F", CHAIN))
            for rule in chain_rules(subnet):
                _check(_iptables("-A", *rule))
        if _iptables("-C", *jump_rule(subnet)).returncode != 0:
            _check(_iptables("-A", *jump_rule(subnet)))


def _check(result: subprocess.CompletedProcess[str]) -> None:
    if result.returncode != 0:
        raise CniError(
            NETWORK_SETUP_FAILED,
            "cannot install the masquerade rules",
            f"{' '.join(map(str, result.args))}: {result.stderr.strip()}",
        )
