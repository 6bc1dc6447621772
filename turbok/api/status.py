"""API errors, each one a Kubernetes ``Status`` waiting to be sent.

The tree (HTTP code, ``Status.reason``)::

    ApiError                       (500 InternalError)
    ├── BadRequest                 (400 BadRequest)
    ├── Unauthorized               (401 Unauthorized)
    ├── Forbidden                  (403 Forbidden)
    ├── NotFound                   (404 NotFound)
    ├── MethodNotAllowed           (405 MethodNotAllowed)
    ├── AlreadyExists              (409 AlreadyExists)
    ├── Conflict                   (409 Conflict)
    ├── Gone                       (410 Expired)
    ├── RequestEntityTooLarge      (413 RequestEntityTooLarge)
    ├── UnsupportedMediaType       (415 UnsupportedMediaType)
    ├── Invalid                    (422 Invalid, with field causes)
    ├── TooManyRequests            (429 TooManyRequests, with Retry-After)
    └── InsufficientStorage        (507 InsufficientStorage: the disk under the store is full)

The store, the registry and the apiserver raise these; the apiserver turns
them into responses with ``to_status()``; controllers read ``code``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from turbok.errors import TurbokError

__all__ = [
    "AlreadyExists",
    "ApiError",
    "BadRequest",
    "Cause",
    "Conflict",
    "Forbidden",
    "Gone",
    "InsufficientStorage",
    "Invalid",
    "MethodNotAllowed",
    "NotFound",
    "RequestEntityTooLarge",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "status_success",
]


@dataclass(frozen=True)
class Cause:
    """One field-level problem, as in ``Status.details.causes``."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


class ApiError(TurbokError):
    code: ClassVar[int] = 500
    reason: ClassVar[str] = "InternalError"

    def __init__(
        self,
        message: str,
        *,
        kind: str = "",
        group: str = "",
        name: str = "",
        causes: list[Cause] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.group = group
        self.name = name
        self.causes = causes or []
        self.retry_after = retry_after

    def to_status(self) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.name:
            details["name"] = self.name
        if self.group:
            details["group"] = self.group
        if self.kind:
            details["kind"] = self.kind
        if self.causes:
            details["causes"] = [c.to_dict() for c in self.causes]
        if self.retry_after is not None:
            details["retryAfterSeconds"] = self.retry_after
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if details:
            status["details"] = details
        return status


class BadRequest(ApiError):
    code, reason = 400, "BadRequest"


class Unauthorized(ApiError):
    code, reason = 401, "Unauthorized"


class Forbidden(ApiError):
    code, reason = 403, "Forbidden"


class NotFound(ApiError):
    code, reason = 404, "NotFound"


class MethodNotAllowed(ApiError):
    code, reason = 405, "MethodNotAllowed"


class AlreadyExists(ApiError):
    code, reason = 409, "AlreadyExists"


class Conflict(ApiError):
    code, reason = 409, "Conflict"


class Gone(ApiError):
    code, reason = 410, "Expired"


class RequestEntityTooLarge(ApiError):
    code, reason = 413, "RequestEntityTooLarge"


class UnsupportedMediaType(ApiError):
    code, reason = 415, "UnsupportedMediaType"


class Invalid(ApiError):
    code, reason = 422, "Invalid"

    @classmethod
    def of(cls, *, kind: str, group: str, name: str, causes: list[Cause]) -> Invalid:
        """The message kube-apiserver writes: ``Kind.group "name" is invalid: field: msg, ...``."""
        resource = f"{kind}.{group}" if group else kind
        listed = ", ".join(f"{c.field}: {c.message}" for c in causes)
        return cls(
            f'{resource} "{name}" is invalid: {listed}', kind=kind, group=group, name=name, causes=causes
        )


class TooManyRequests(ApiError):
    code, reason = 429, "TooManyRequests"


class InsufficientStorage(ApiError):
    # Kubernetes has no reason for this (an etcd out of space answers 500): 507 says what happened and
    # that a retry once space is back will do.
    code, reason = 507, "InsufficientStorage"


def status_success(*, name: str = "", kind: str = "", group: str = "", uid: str = "") -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    if uid:
        details["uid"] = uid
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
