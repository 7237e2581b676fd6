"""Generate the Python modules for every .proto under proto/ (grpcio-tools).

The generated modules are committed; tests/common/test_generated_protos.py regenerates them into a
temporary directory and fails if they differ, so the .proto files stay the single source.
Usage: python scripts/generate_protos.py [OUTPUT_DIR]   (default: the repository root)
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"


def proto_sources() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(output: Path) -> None:
    from grpc_tools import protoc

    for source in proto_sources():
        relative = source.relative_to(PROTO_ROOT)
        (output / relative.parent).mkdir(parents=True, exist_ok=True)
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"--python_out={output}",
                f"--pyi_out={output}",
                f"--grpc_python_out={output}",
                str(relative),
            ]
        )
        if status != 0:
            raise SystemExit(f"protoc failed on {relative} (exit {status})")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO)
