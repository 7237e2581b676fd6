"""CNI errors: the spec's well-known codes and the error JSON a plugin prints on stdout."""

from __future__ import annotations

from smarter_common.errors import SmarterError

# Not `from typing import ...`: importing typing costs every exec ~2.5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Well-known codes (CNI spec, "Error codes"); 100+ are this plugin's own.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
ADDRESS_POOL_EXHAUSTED = 100
NETWORK_SETUP_FAILED = 101
CHECK_FAILED = 102
INTERNAL_FAILURE = 110


class CniError(SmarterError):
    """A failed CNI command: `code`, a short `msg`, and `details` for the operator."""

    def __init__(self, code: int, msg: str, details: str = "", *, hint: str | None = None) -> None:
        super().__init__(msg if not details else f"{msg}: {details}", hint=hint)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        details = self.details
        if self.hint:
            details = f"{details} ({self.hint})" if details else self.hint
        body: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if details:
            body["details"] = details
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> CniError:
        return cls(
            int(body.get("code", 999)), str(body.get("msg", "")), str(body.get("details", ""))
        )
