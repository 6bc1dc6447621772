"""The public surface of turbok.runtime is exactly what others code against."""

from __future__ import annotations

import turbok.runtime as rt
from turbok.runtime import base


def test_package_exports() -> None:
    assert sorted(rt.__all__) == sorted([
        "BASE_IMAGE", "DEFAULT_OUTPUT_LIMIT", "WORKDIR_MOUNT", "BubblewrapRuntime", "ExecResult",
        "ImageBuildFailed", "ImageError", "ImageNotBuilt", "ImageNotFound", "ImageStore",
        "InvalidSandboxSpec", "Isolation", "NoIsolationAvailable", "Phase", "Process", "Runtime",
        "RuntimeError_", "RuntimeState", "RunscRuntime", "SandboxNotRunning", "SandboxSpec",
        "SandboxStartFailed", "VolumeMount", "default_images_dir", "make_runtime", "sandbox_id",
        "validate_id",
    ])
    for name in rt.__all__:
        assert getattr(rt, name) is not None


def test_contract_names_stay_in_base() -> None:
    for name in ("Runtime", "SandboxSpec", "RuntimeState", "ExecResult", "Process", "Isolation", "Phase",
                 "sandbox_id", "DEFAULT_OUTPUT_LIMIT", "SandboxNotRunning", "RuntimeError_", "VolumeMount"):
        assert hasattr(base, name), name
    assert issubclass(base.SandboxNotRunning, base.RuntimeError_)
    for method in ("start", "stop", "remove", "state", "list", "spawn", "exec", "workdir"):
        assert callable(getattr(base.Runtime, method))
    assert str(base.Phase.RUNNING) == "Running" and str(base.Isolation.GVISOR) == "gvisor"


def test_runtime_classes_implement_the_contract() -> None:
    for cls in (rt.RunscRuntime, rt.BubblewrapRuntime):
        assert issubclass(cls, base.Runtime)
        assert not getattr(cls, "__abstractmethods__", None)
