"""One error hierarchy for the whole package.

Services raise these; the API maps them once to a JSON error body and the CLI once to a
message and an exit code. Every message says what was wrong and, where it can, how to fix it.
"""

from __future__ import annotations

from typing import Any


class LmfError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        detail: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.detail = detail

    def to_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "status": self.status_code,
        }
        if self.param is not None:
            error["param"] = self.param
        if self.detail is not None:
            error["detail"] = self.detail
        return {"error": error}


class InvalidRequest(LmfError):
    status_code = 400
    code = "invalid_request"


class Unauthorized(LmfError):
    status_code = 401
    code = "unauthorized"


class Forbidden(LmfError):
    status_code = 403
    code = "forbidden"


class NotFound(LmfError):
    status_code = 404
    code = "not_found"


class Conflict(LmfError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(LmfError):
    status_code = 413
    code = "payload_too_large"


class Unprocessable(LmfError):
    """A valid parameter this model or engine does not support (Azure's 422)."""

    status_code = 422
    code = "parameter_not_supported"

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        # Azure AI model inference puts `detail.loc` at the top level of a 422 body.
        body["detail"] = self.detail
        body["status"] = self.status_code
        body["message"] = self.message
        return body


class RateLimited(LmfError):
    status_code = 429
    code = "rate_limited"


class Unavailable(LmfError):
    status_code = 503
    code = "unavailable"


class InsufficientStorage(LmfError):
    """A write failed because the disk (or the process's file size limit) is full."""

    status_code = 507
    code = "insufficient_storage"


class EngineFailed(Unavailable):
    """The instance died or its engine failed while answering: a 503 with Retry-After, as
    the instance is restarted and the same request will succeed again."""

    code = "engine_failed"


class FlowFailed(LmfError):
    """A flow ran and one of its nodes raised (Prompt flow answers a user error with 400)."""

    status_code = 400
    code = "flow_failed"


class Timeout(LmfError):
    status_code = 504
    code = "timeout"
