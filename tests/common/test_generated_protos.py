"""The committed generated modules match what grpcio-tools makes from proto/ now."""

import filecmp
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_modules_match_the_proto_sources(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "scripts/generate_protos.py"), str(tmp_path)], check=True
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "protoc produced nothing"
    stale = [
        str(rel) for rel in generated if not filecmp.cmp(tmp_path / rel, REPO / rel, shallow=False)
    ]
    assert not stale, f"regenerate with `python scripts/generate_protos.py`: {stale} differ"


def test_device_plugin_api_has_the_published_field_numbers() -> None:
    from device_plugin.api import v1beta1_pb2 as api

    register = api.RegisterRequest.DESCRIPTOR.fields_by_name
    assert api.DESCRIPTOR.package == "v1beta1"
    assert {n: f.number for n, f in register.items()} == {
        "version": 1,
        "endpoint": 2,
        "resource_name": 3,
        "options": 4,
    }
    spec = api.DeviceSpec.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in spec.items()} == {
        "container_path": 1,
        "host_path": 2,
        "permissions": 3,
    }
    services = {
        s.name: [m.name for m in s.methods] for s in api.DESCRIPTOR.services_by_name.values()
    }
    assert services == {
        "Registration": ["Register"],
        "DevicePlugin": [
            "GetDevicePluginOptions",
            "ListAndWatch",
            "GetPreferredAllocation",
            "Allocate",
            "PreStartContainer",
        ],
    }
