"""Domain errors: one root, the HTTP status and error code on the class, one JSON shape."""

from __future__ import annotations

from typing import Any, ClassVar


class ServingError(Exception):
    """Root of every error the server reports to a client as `{"error": {...}}`."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class MalformedRequest(ServingError):
    status_code = 400
    code = "malformed_request"


class NotFound(ServingError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class Unauthorized(ServingError):
    """No bearer token, or not `Authorization: Bearer <token>` (sent with WWW-Authenticate)."""

    status_code = 401
    code = "unauthorized"


class Forbidden(ServingError):
    """A bearer token that is not the admin token."""

    status_code = 403
    code = "forbidden"


class MethodNotAllowed(ServingError):
    status_code = 405
    code = "method_not_allowed"


class PayloadTooLarge(ServingError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServingError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidInput(ServingError):
    status_code = 422
    code = "invalid_input"


class ModelUnavailable(ServingError):
    """The model exists but no loaded version can answer (not ready, or failed to load)."""

    status_code = 503
    code = "model_unavailable"


class StoreError(ServingError):
    """A store operation was refused (bad name, missing artifact, nothing to roll back...)."""

    status_code = 422
    code = "store_error"


class StoreReadOnly(StoreError):
    """The store cannot be written (a read-only mount, no permission): nothing was changed."""

    status_code = 503
    code = "store_read_only"


class StoreUnavailable(StoreError):
    """The object store cannot be reached (or answers 5xx): try again; nothing was changed."""

    status_code = 503
    code = "store_unavailable"


class DeploymentDamaged(StoreError):
    """A model's deployment record cannot be read (not JSON, or not the documented shape).

    Refused like a damaged artifact: workers keep serving the last good deployment; the
    operator repairs the file (or restores it from history.jsonl, see docs/operations.md).
    """

    status_code = 503
    code = "deployment_damaged"


class StoreConflict(StoreError):
    """Concurrent writers kept changing a deployment; this change was not applied."""

    status_code = 409
    code = "store_conflict"


class ConfigError(Exception):
    """A setting has a bad value; raised at start-up, never during a request."""
