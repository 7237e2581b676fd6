"""Fixtures every CNI test module shares."""

from __future__ import annotations

from contextlib import nullcontext

import pytest

from tests.cni.harness import AgentMode, agent


@pytest.fixture(params=["agent", "in-process"])
def mode(request: pytest.FixtureRequest) -> AgentMode:
    """Every behaviour holds with the agent serving the plugin and without it."""
    if request.param == "agent":
        return agent
    return lambda _node: nullcontext()
