"""Every program answers --help and --version, and the exec'd ones import nothing heavy."""

import subprocess
import sys
from pathlib import Path

import pytest

from smarter_common import __version__

BIN = Path(sys.executable).parent
PROGRAMS = ["smarter-cni", "smarter-device-manager", "smarter-hybrid-runtime", "smarter-sim"]


@pytest.mark.parametrize("program", PROGRAMS)
def test_version_and_help(program: str) -> None:
    version = subprocess.run(
        [BIN / program, "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"{program} {__version__}"
    help_text = subprocess.run(
        [BIN / program, "--help"], capture_output=True, text=True, check=True
    )
    assert help_text.stdout.startswith(f"usage: {program}")


@pytest.mark.parametrize("package", ["cni", "runtime_handler", "smarter_common"])
def test_package_import_pulls_in_no_heavy_module(package: str) -> None:
    probe = (
        f"import sys, {package}; "
        "heavy = [m for m in ('pyroute2', 'grpc', 'structlog', 'elftools', 'yaml', 'watchdog') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
