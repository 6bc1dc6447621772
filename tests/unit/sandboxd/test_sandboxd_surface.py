"""The public fronts of turbok.sandboxd and turbok.sdk are exactly what was meant."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import turbok.sandboxd
import turbok.sdk

SANDBOXD = {
    "DEFAULT_EXEC_TIMEOUT", "DEFAULT_OUTPUT_LIMIT", "DEFAULT_UPLOAD_LIMIT", "MAX_EXEC_TIMEOUT", "SANDBOX_WORKDIR",
    "DEFAULT_EXEC_CONCURRENCY", "DEFAULT_EXEC_QUEUE", "DEFAULT_EXEC_QUEUE_WAIT", "DEFAULT_OUTPUT_RATE",
    "DEFAULT_UPLOAD_TOTAL_LIMIT", "ExecFailed", "InsufficientStorage", "SandboxRestarting", "TooManyRequests",
    "AccessDenied", "BadRequest", "Conflict", "MethodNotAllowed", "NotFound", "PayloadTooLarge", "RouterConfig",
    "RouterMetrics", "RunningRouter", "SandboxNotFound", "SandboxNotReady", "SandboxNotRunning",
    "SandboxResolver", "SandboxdError", "StaticResolver", "Unauthorized", "create_router_app", "serve_router",
}  # fmt: skip
SDK = {
    "AccessDenied", "AsyncCommands", "AsyncExecStream", "AsyncFiles", "AsyncSandboxConnection", "BadRequest", "CommandFailed", "CommandResult", "Commands", "Conflict", "ErrorFrame",
    "ExecStream", "ExitFrame", "FileInfo", "Files", "Frame", "NotFound", "OutputFrame", "PayloadTooLarge",
    "ProtocolError", "RouterError", "SandboxConnection", "SandboxNotFound", "SandboxNotReady", "SdkError",
    "TransportError", "Unauthorized", "auth_headers", "InsufficientStorage", "TooManyRequests",
}  # fmt: skip


@pytest.mark.parametrize(("package", "expected"), [(turbok.sandboxd, SANDBOXD), (turbok.sdk, SDK)])
def test_public_surface(package: object, expected: set[str]) -> None:
    assert set(package.__all__) == expected  # type: ignore[attr-defined]
    for name in expected:
        assert getattr(package, name) is not None


@pytest.mark.parametrize("package", [turbok.sandboxd, turbok.sdk])
def test_every_module_has_a_docstring_and_all(package: object) -> None:
    for info in pkgutil.iter_modules(package.__path__):  # type: ignore[attr-defined]
        module = importlib.import_module(f"{package.__name__}.{info.name}")  # type: ignore[attr-defined]
        assert module.__doc__ and len(module.__doc__) > 40, module.__name__
        assert isinstance(getattr(module, "__all__", None), list), module.__name__


def test_errors_are_turbok_errors_with_distinct_reasons() -> None:
    from turbok.errors import TurbokError
    from turbok.sandboxd import errors as server
    from turbok.sdk import errors as client

    classes = [getattr(server, n) for n in server.__all__]
    assert all(issubclass(c, TurbokError) for c in classes)
    reasons = [c.reason for c in classes]
    assert len(reasons) == len(set(reasons))
    # Every reason the router sends maps to a client class of the same status (405 stays generic).
    for cls in classes:
        err = client.error_from_response(cls.status, f'{{"message": "m", "reason": "{cls.reason}"}}'.encode())
        assert err.status == cls.status and (type(err) is not client.RouterError or cls.status in (405, 500))
