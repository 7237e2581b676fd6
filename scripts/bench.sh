#!/usr/bin/env bash
# Run every benchmark beside the reference implementations and print one table of results.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
scripts/setup.sh
exec .venv/bin/python -m bench "$@"
