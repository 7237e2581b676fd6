"""The container-tools page and its example files say what the tools' tests run."""

from __future__ import annotations

import re

import yaml

from tests.tools.test_container_tools import (
    CTR_RUN,
    DOCKER_RUN,
    EXAMPLES,
    IMAGE,
    PODMAN_RUN,
    REPO,
)

PAGE = REPO / "docs" / "container-tools.md"


def _page_commands() -> str:
    """The page with continued lines joined and runs of spaces made one."""
    return re.sub(r"[ \t]+", " ", PAGE.read_text().replace("\\\n", " "))


def test_the_page_gives_the_commands_the_tests_run() -> None:
    page = _page_commands()
    for tool, words in (("ctr", CTR_RUN), ("podman", PODMAN_RUN), ("docker", DOCKER_RUN)):
        assert f"{tool} {' '.join(words)}" in page, tool


def test_the_compose_service_is_the_docker_run_the_tests_run() -> None:
    compose = yaml.safe_load((EXAMPLES / "compose.yaml").read_text())
    [service] = compose["services"].values()
    assert service["image"] == IMAGE
    assert service["runtime"] == "hybrid"
    assert service["network_mode"] == "none"
    assert service["environment"] == {"SMARTER_RPROC": "remoteproc0"}
    assert service["build"] == "."


def test_the_example_dockerfile_is_the_firmware_alone() -> None:
    instructions = [
        line.split(None, 1)
        for line in (EXAMPLES / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert instructions[0] == ["FROM", "scratch"]
    assert ["COPY", "firmware.elf /firmware.elf"] in instructions
    assert instructions[-1] == ["ENTRYPOINT", '["/firmware.elf"]']
