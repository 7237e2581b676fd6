#!/usr/bin/env bash
# Bring up the demo gateway. Installs what it needs first (scripts/setup.sh).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
scripts/setup.sh
exec .venv/bin/python -m testbed.demo "$@"
