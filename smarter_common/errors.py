"""The error types every program raises for conditions an operator can act on."""

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
