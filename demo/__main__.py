"""Show what each program would do on this machine (dry runs); grows into the whole gateway."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def main() -> int:
    for program in (
        "smarter-cni",
        "smarter-device-manager",
        "smarter-hybrid-runtime",
        "smarter-sim",
    ):
        print(f"--- {program}", flush=True)
        subprocess.run([BIN / program, "--version"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
