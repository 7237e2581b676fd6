"""Every log event is a snake_case name; what varies goes in fields (smarter_common.logs)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("cni", "device_plugin", "runtime_handler", "sim", "smarter_common", "testbed")
METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
EVENT = re.compile(r"^[a-z][a-z0-9_]*$")
# The runtime's error entries are runc's `msg`: the runc shim shows it to the user as it is.
RUNC_MESSAGES = frozenset({("runtime_handler/supervisor.py", "error")})


def _events(node: ast.expr) -> list[str] | None:
    """The event names a first argument can be: literals, or a choice between literals."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        body, orelse = _events(node.body), _events(node.orelse)
        if body is not None and orelse is not None:
            return body + orelse
    return None


def _logger_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in METHODS
        and "log" in ast.unparse(node.func.value).lower()
        and node.args
    ]


def test_every_event_name_is_snake_case() -> None:
    wrong: list[str] = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            where = path.relative_to(REPO).as_posix()
            if where.startswith("device_plugin/api/"):
                continue
            for call in _logger_calls(ast.parse(path.read_text())):
                assert isinstance(call.func, ast.Attribute)
                events = _events(call.args[0])
                if events is None:
                    if (where, call.func.attr) not in RUNC_MESSAGES:
                        wrong.append(f"{where}:{call.lineno}: {ast.unparse(call.args[0])}")
                    continue
                wrong += [
                    f"{where}:{call.lineno}: {event!r}"
                    for event in events
                    if not EVENT.match(event)
                ]
    assert wrong == []
