"""Errors of the AI conformance checker, one tree under ``TurbokError``.

Who raises what: ``catalog`` raises ``UnsupportedVersionError``; ``kube`` maps
every HTTP failure to a ``ClusterError`` subclass (``raise ... from`` the httpx
error). Kubeconfig problems (no file, no context, a failing exec plugin) are
``turbok.client.errors.KubeconfigError``, from the shared kubeconfig reader,
outside this tree. The CLI turns ``UsageError`` subclasses and ``KubeconfigError``
into exit code 2 and every other ``ConformanceError`` into exit code 1.
A check that meets an unexpected ``ClusterError`` ends ``Unknown``; it never
crashes the run. Validation findings are data (``validator.Finding``), not errors.

    TurbokError
    └── ConformanceError
        ├── UsageError                  the command line asks for something impossible (exit 2)
        │   ├── UnsupportedVersionError no checklist for that Kubernetes version
        │   └── InvalidOptionError      a bad --focus/--skip pattern, a bad option value
        ├── ProductFileError            PRODUCT.yaml cannot be read or is not a YAML mapping
        └── ClusterError                talking to the cluster failed
            ├── ClusterUnreachableError connection refused, TLS failure, timeout
            └── ApiError                the API server answered with a failure Status
                ├── NotFoundError       404
                ├── AlreadyExistsError  409 on create
                ├── ConflictError       409 otherwise
                ├── ForbiddenError      401 / 403
                └── InvalidError        400 / 422

An admission webhook denial arrives as 400, 403 or 422 depending on the
webhook; ``ApiError.denied_by_webhook`` tells them apart from RBAC failures.
"""

from __future__ import annotations

from turbok.errors import TurbokError

__all__ = [
    "AlreadyExistsError",
    "ApiError",
    "ClusterError",
    "ClusterUnreachableError",
    "ConflictError",
    "ConformanceError",
    "ForbiddenError",
    "InvalidError",
    "InvalidOptionError",
    "NotFoundError",
    "ProductFileError",
    "UnsupportedVersionError",
    "UsageError",
    "api_error_for",
]


class ConformanceError(TurbokError):
    """Root of the conformance checker's errors."""


class UsageError(ConformanceError):
    """The invocation cannot work as given; the CLI exits 2."""


class UnsupportedVersionError(UsageError):
    """No checklist exists for the requested or detected Kubernetes version."""


class InvalidOptionError(UsageError):
    """An option value is malformed (a regular expression, a duration, a selector)."""


class ProductFileError(ConformanceError):
    """A PRODUCT.yaml file cannot be read or parsed into a mapping."""


class ClusterError(ConformanceError):
    """Talking to the cluster failed."""


class ClusterUnreachableError(ClusterError):
    """No HTTP answer: connection refused, DNS, TLS handshake or timeout."""


class ApiError(ClusterError):
    """The API server answered with a failure ``Status``."""

    def __init__(self, *, code: int, reason: str, message: str, method: str, path: str) -> None:
        self.code = code
        self.reason = reason
        self.api_message = message
        self.method = method
        self.path = path
        super().__init__(f"{method} {path}: {code} {reason}: {message}")

    @property
    def denied_by_webhook(self) -> bool:
        """True when an admission webhook rejected the request (any status code)."""
        return "admission webhook" in self.api_message and "denied" in self.api_message


class NotFoundError(ApiError):
    """404: the object, the resource or the API group does not exist."""


class AlreadyExistsError(ApiError):
    """409 on create: an object of that name exists."""


class ConflictError(ApiError):
    """409 on update: the resourceVersion moved on."""


class ForbiddenError(ApiError):
    """401 or 403: the credentials may not do this."""


class InvalidError(ApiError):
    """400 or 422: the object was rejected by validation or an admission webhook."""


def api_error_for(*, code: int, reason: str, message: str, method: str, path: str) -> ApiError:
    """The ``ApiError`` subclass for an HTTP status code and ``Status.reason``."""
    cls: type[ApiError]
    if code == 404:
        cls = NotFoundError
    elif code == 409:
        cls = AlreadyExistsError if reason == "AlreadyExists" or method == "POST" else ConflictError
    elif code in (401, 403):
        cls = ForbiddenError
    elif code in (400, 422):
        cls = InvalidError
    else:
        cls = ApiError
    return cls(code=code, reason=reason, message=message, method=method, path=path)
