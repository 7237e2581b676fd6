"""The kubelet's side of the CRI (`runtime.v1`), for driving containerd as a node would.

`cri_runtime_v1.proto` is the subset of the published API we use. Its Python modules are made
by grpcio-tools on first use into a cache directory keyed by the proto's hash, so the .proto is
the only source kept in the repository.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from smarter_common.errors import SmarterError

PROTO = Path(__file__).with_name("cri_runtime_v1.proto")
_MODULE = "cri_runtime_v1_pb2"
_GRPC_MODULE = "cri_runtime_v1_pb2_grpc"


class CriProtoError(SmarterError):
    """The CRI modules cannot be generated."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()[:16]
    return Path(base) / "smarter-edge" / "cri" / digest


def generate(output: Path) -> None:
    """Run protoc (grpcio-tools) on the proto, writing the modules into `output`."""
    try:
        protoc = importlib.import_module("grpc_tools.protoc")
    except ImportError as error:
        raise CriProtoError(
            "grpcio-tools is not installed", hint="run scripts/setup.sh (test extras)"
        ) from error
    output.mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO.parent}",
            f"--python_out={output}",
            f"--grpc_python_out={output}",
            PROTO.name,
        ]
    )
    if status != 0:
        raise CriProtoError(f"protoc failed on {PROTO} (exit {status})")


def load() -> tuple[ModuleType, ModuleType]:
    """The generated message module and gRPC stub module, generating them if needed."""
    if _MODULE in sys.modules and _GRPC_MODULE in sys.modules:
        return sys.modules[_MODULE], sys.modules[_GRPC_MODULE]
    directory = cache_dir()
    if not (directory / f"{_GRPC_MODULE}.py").is_file():
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".gen-", dir=directory.parent))
        try:
            generate(staging)
            try:
                staging.rename(directory)
            except OSError:
                if not (directory / f"{_GRPC_MODULE}.py").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _import(directory, _MODULE), _import(directory, _GRPC_MODULE)


def _import(directory: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, directory / f"{name}.py")
    if spec is None or spec.loader is None:
        raise CriProtoError(f"cannot load {name} from {directory}")
    module = importlib.util.module_from_spec(spec)
    # The stub module imports the message module by its top-level name.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
