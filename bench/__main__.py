"""Run every benchmark (`bench/bench_*.py`, each with `run() -> list[Measurement]`), one table.

Usage: python -m bench [NAME ...]   e.g. `python -m bench cni` runs bench/bench_cni.py only.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback

import bench
from bench.report import Measurement, render_table


def _benchmark_names() -> list[str]:
    return sorted(
        info.name.removeprefix("bench_")
        for info in pkgutil.iter_modules(bench.__path__)
        if info.name.startswith("bench_")
    )


def main(argv: list[str]) -> int:
    chosen = argv or _benchmark_names()
    results: list[Measurement] = []
    failed: list[str] = []
    for name in chosen:
        print(f"==> benchmark {name}", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench.bench_{name}")
        try:
            results.extend(module.run())
        except Exception:
            traceback.print_exc()
            failed.append(name)
    print(render_table(results))
    if failed:
        print(f"failed benchmarks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
