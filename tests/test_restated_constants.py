"""Each constant an exec'd fast path restates (it may not import its home) equals its canonical one.

The fast paths and why they restate: docs/contributing.md, "Restated constants".
"""

from __future__ import annotations

import pytest

import cni.client
import cni.errors
import cni.request
import runtime_handler.bundle
import runtime_handler.route
import runtime_handler.settings
import runtime_handler.state
import smarter_common.firmware_elf
import smarter_common.remoteproc

# (the fast path's copy, the canonical value), named after the copy.
RESTATED: dict[str, tuple[object, object]] = {
    "cni.client.TRY_AGAIN_LATER": (cni.client.TRY_AGAIN_LATER, cni.errors.TRY_AGAIN_LATER),
    "cni.client.DEFAULT_VERSION": (
        cni.client.DEFAULT_VERSION,
        cni.request.SUPPORTED_VERSIONS[-1],  # the newest version smarter-cni speaks
    ),
    "runtime_handler.bundle.ELF_MAGIC": (
        runtime_handler.bundle.ELF_MAGIC,
        smarter_common.firmware_elf.ELF_MAGIC,
    ),
    "runtime_handler.bundle.RPROC_ENV": (
        runtime_handler.bundle.RPROC_ENV,
        smarter_common.remoteproc.ENV_RPROC,
    ),
    "runtime_handler.route.STATE_DIRECTORY": (
        runtime_handler.route.STATE_DIRECTORY,
        runtime_handler.state.STATE_SUBDIR,
    ),
    "runtime_handler.route.RUNC_ENV": (
        runtime_handler.route.RUNC_ENV,
        runtime_handler.settings.RUNC_ENV,
    ),
    "runtime_handler.route.SETTINGS_NAMES": (
        runtime_handler.route.SETTINGS_NAMES,
        frozenset(runtime_handler.settings.NAMES),
    ),
    "runtime_handler.route.SETTINGS_SUFFIX": (
        runtime_handler.route.SETTINGS_SUFFIX,
        runtime_handler.settings.FILE_SUFFIX,
    ),
    "runtime_handler.route.SETTINGS_MAX_BYTES": (
        runtime_handler.route.SETTINGS_MAX_BYTES,
        runtime_handler.settings._MAX_FILE_BYTES,
    ),
}


@pytest.mark.parametrize("name", list(RESTATED))
def test_fast_path_copy_equals_its_canonical_constant(name: str) -> None:
    copy, canonical = RESTATED[name]
    assert copy == canonical, f"{name} is {copy!r}, its canonical value {canonical!r}"
