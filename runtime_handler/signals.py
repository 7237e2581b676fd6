"""`kill`'s signal argument as runc 1.1 reads it, and what each signal does to a core.

runc takes a number (Go's Atoi: `9`, `+9`; the kernel refuses one outside 0..64 with EINVAL) or
one of the 31 names Go's x/sys/unix knows, any case, with or without `SIG` (`IOT`, `CLD`,
`POLL`, `RTMIN` are not among them). A firmware container is treated as a process would be:
its signal's default action (signal(7)) decides.

| default action | signals | on a firmware container |
|---|---|---|
| terminate | HUP INT PIPE ALRM TERM USR1 USR2 STKFLT IO PROF VTALRM PWR 32-64 | stopped, 128+n |
| core dump | QUIT ILL TRAP ABRT BUS FPE SEGV XCPU XFSZ SYS | core stopped, exit 128+n |
| kill | KILL | core stopped, exit 137 |
| ignore | CHLD URG WINCH | nothing |
| continue | CONT | nothing (a core is never paused) |
| stop | STOP TSTP TTIN TTOU | refused: remoteproc cannot pause a core |
| (0) | 0 | nothing: tells whether the container runs |
"""

from __future__ import annotations

from runtime_handler.errors import RuntimeCallError

# Linux's numbers (x86, arm, arm64 alike) for the names runc accepts.
NUMBERS = {
    "SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGILL": 4, "SIGTRAP": 5, "SIGABRT": 6,
    "SIGBUS": 7, "SIGFPE": 8, "SIGKILL": 9, "SIGUSR1": 10, "SIGSEGV": 11, "SIGUSR2": 12,
    "SIGPIPE": 13, "SIGALRM": 14, "SIGTERM": 15, "SIGSTKFLT": 16, "SIGCHLD": 17,
    "SIGCONT": 18, "SIGSTOP": 19, "SIGTSTP": 20, "SIGTTIN": 21, "SIGTTOU": 22, "SIGURG": 23,
    "SIGXCPU": 24, "SIGXFSZ": 25, "SIGVTALRM": 26, "SIGPROF": 27, "SIGWINCH": 28, "SIGIO": 29,
    "SIGPWR": 30, "SIGSYS": 31,
}  # fmt: skip
MAX_SIGNAL = 64  # SIGRTMAX
DEFAULT = "SIGTERM"

STOPS_CORE = "stop"
NO_EFFECT = "none"

_IGNORED = frozenset({17, 23, 28, 18})  # CHLD, URG, WINCH; CONT continues what never paused
_PAUSING = frozenset({19, 20, 21, 22})  # STOP, TSTP, TTIN, TTOU
_NAMES = {number: name for name, number in NUMBERS.items()}


def parse(text: str) -> int:
    """The signal number `text` names, as runc parses it; an empty argument is SIGTERM.

    A number out of the kernel's range is returned as is: runc refuses it only when it
    signals (`effect`), after it has checked that the container runs.
    """
    if not text:
        return NUMBERS[DEFAULT]
    digits = text[1:] if text[:1] in ("+", "-") else text
    if digits.isascii() and digits.isdigit() and len(digits) <= 18:
        return int(text)
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    number = NUMBERS.get(name)
    if number is None:
        # Go's %q; the names and numbers runc takes are ASCII.
        raise RuntimeCallError(f"unknown signal {_go_quote(text)}")
    return number


def effect(number: int) -> str:
    """What the signal does to a running firmware container: STOPS_CORE or NO_EFFECT;
    a signal it cannot take is refused (RuntimeCallError)."""
    if not 0 <= number <= MAX_SIGNAL:
        # kill(2)'s EINVAL, in runc's words.
        raise RuntimeCallError("unable to signal init: invalid argument")
    if number == 0 or number in _IGNORED:
        return NO_EFFECT
    if number in _PAUSING:
        raise RuntimeCallError(
            f"{name(number)} would pause the container, and a remote core cannot be paused"
            " through remoteproc",
            hint="stop the container with SIGTERM or SIGKILL",
        )
    return STOPS_CORE


def name(number: int) -> str:
    return _NAMES.get(number) or f"signal {number}"


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
