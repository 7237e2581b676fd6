#!/usr/bin/env bash
# Install everything (scripts/setup.sh), then lint, type-check and run the whole test suite.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
scripts/setup.sh
PACKAGES=(smarter_common cni device_plugin runtime_handler sim testbed)
echo "==> ruff" >&2
.venv/bin/ruff check "${PACKAGES[@]}" tests bench scripts
echo "==> mypy --strict" >&2
.venv/bin/mypy --strict "${PACKAGES[@]}" tests bench
echo "==> pytest" >&2
# Everything is installed here: a test whose tool is missing fails instead of being skipped.
SMARTER_TEST_REQUIRE_ALL=1 exec .venv/bin/python -m pytest "$@"
