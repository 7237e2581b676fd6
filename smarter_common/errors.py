"""The error types every program raises for conditions an operator can act on.

Each carries a message and, when known, a hint: what to do. smarter_common.entry turns one
that reaches a program's command line into one stderr line and an exit code
(docs/contributing.md, "Exit codes"); the runtime says it in runc's log and exits 1; the CNI
plugin answers with the spec's error JSON on stdout.

SmarterError                                 exit 1: refused, or failed while running
├── ConfigError                              exit 2: a setting, flag or file is wrong
│   ├── runtime_handler.containerd_config.ContainerdConfigError
│   ├── runtime_handler.engine_config.EngineConfigError
│   └── smarter_common.bundle_install.BundleError
├── HostPathError                            a host path is missing or would escape the root
├── LockBusyError                            another process holds a lock
├── FirmwareError (smarter_common.firmware_elf)
├── RemoteCoreError (smarter_common.remoteproc_control)
├── cni.errors.CniError                      with the CNI spec's code
├── runtime_handler.errors.RuntimeCallError  what the runc shim shows the user
│   ├── ContainerNotFoundError
│   ├── ContainerStateError                  a record (state.json) that cannot be read
│   ├── FirmwareRefusedError
│   └── runtime_handler.settings.SettingsError
└── sim: SimulatorError, QemuMissingError, FirmwareBuildError, ImageError, NodeImageError
"""

from __future__ import annotations


class SmarterError(Exception):
    """Base of the project's errors: a message for the operator and, when known, what to do."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ConfigError(SmarterError):
    """A configuration value is missing, malformed or out of range."""


class HostPathError(SmarterError):
    """A path on the host is missing, unreadable, or would escape the host root."""


class LockBusyError(SmarterError):
    """A lock is held by another process."""
