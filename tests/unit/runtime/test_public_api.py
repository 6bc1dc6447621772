"""The public surface of turbok.runtime is exactly what others code against."""

from __future__ import annotations

import turbok.runtime as rt


def test_package_exports() -> None:
    assert sorted(rt.__all__) == sorted([
        "BASE_IMAGE", "DEFAULT_OUTPUT_LIMIT", "WORKDIR_MOUNT", "BubblewrapPodRuntime",
        "ExecResult", "GvisorPodRuntime", "HibernationUnsupported",
        "ImageBuildFailed", "ImageError", "ImageNotBuilt", "ImageNotFound", "ImageStore",
        "InvalidSandboxSpec", "Isolation", "NoIsolationAvailable", "Process",
        "RuntimeError_", "SandboxNotRunning", "SandboxStartFailed", "default_images_dir", "make_pod_runtime",
        "sandbox_id", "validate_id",
    ])
    for name in rt.__all__:
        assert getattr(rt, name) is not None
    assert issubclass(rt.SandboxNotRunning, rt.RuntimeError_)
    assert str(rt.Isolation.GVISOR) == "gvisor" and rt.WORKDIR_MOUNT == "/app"


def test_the_old_runtime_contract_is_gone() -> None:
    import importlib.util

    for module in ("base", "gvisor", "bubblewrap", "local", "layout", "bundle"):
        assert importlib.util.find_spec(f"turbok.runtime.{module}") is None, module
    for name in ("Runtime", "RunscRuntime", "BubblewrapRuntime", "SandboxSpec", "RuntimeState", "make_runtime"):
        assert not hasattr(rt, name), name


def test_pod_runtimes_implement_the_cri_contract() -> None:
    from turbok.runtime import cri

    for cls in (rt.GvisorPodRuntime, rt.BubblewrapPodRuntime):
        assert issubclass(cls, cri.PodRuntime)
        assert not getattr(cls, "__abstractmethods__", None)
    assert rt.GvisorPodRuntime.supports_hibernation and not rt.BubblewrapPodRuntime.supports_hibernation
    assert issubclass(rt.HibernationUnsupported, NotImplementedError)
    assert issubclass(rt.HibernationUnsupported, rt.RuntimeError_)
