"""Moved to runtime_handler.runc_cli (runc's command line); this name stays only until the
firmware command module imports Invocation from there."""

from runtime_handler.runc_cli import DEFAULT_ROOT, Invocation, id_problem, parse

__all__ = ["DEFAULT_ROOT", "Invocation", "id_problem", "parse"]
