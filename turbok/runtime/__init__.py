"""How a sandbox runs on this machine.

Owns: the ``Runtime`` contract (``base``) and its errors (``errors``); the
gVisor runtime (``gvisor``: ``runsc`` under the hood) and the bubblewrap
fallback (``bubblewrap``), picked by ``factory.make_runtime``; the on-disk
layout of a sandbox (``layout``), its own bounded disk (``disk``, on a loop
device: ``loopdev``; host mounts: ``mounts``), its output logs (``logs``:
rotation), its root filesystem (``overlay``), its OCI bundle (``bundle``) and
cgroups (``cgroups``); images (``images``: the local image table;
``base_image``: building the built-in base image); process plumbing
(``process``: capped output, timeouts).

Does not own: what a Sandbox object means (``turbok.controllers``) or how
requests reach a sandbox (``turbok.sandboxd``). Never imports controllers,
the store or the apiserver. See docs/runtime.md.
"""

from turbok.runtime.base import (
    DEFAULT_OUTPUT_LIMIT,
    WORKDIR_MOUNT,
    ExecResult,
    Isolation,
    Phase,
    Process,
    Runtime,
    RuntimeState,
    SandboxSpec,
    VolumeMount,
    sandbox_id,
    validate_id,
)
from turbok.runtime.bubblewrap import BubblewrapRuntime
from turbok.runtime.errors import (
    ImageBuildFailed,
    ImageError,
    ImageNotBuilt,
    ImageNotFound,
    InvalidSandboxSpec,
    NoIsolationAvailable,
    RuntimeError_,
    SandboxNotRunning,
    SandboxStartFailed,
)
from turbok.runtime.factory import make_runtime
from turbok.runtime.gvisor import RunscRuntime
from turbok.runtime.images import BASE_IMAGE, ImageStore, default_images_dir

__all__ = [
    "BASE_IMAGE",
    "DEFAULT_OUTPUT_LIMIT",
    "WORKDIR_MOUNT",
    "BubblewrapRuntime",
    "ExecResult",
    "ImageBuildFailed",
    "ImageError",
    "ImageNotBuilt",
    "ImageNotFound",
    "ImageStore",
    "InvalidSandboxSpec",
    "Isolation",
    "NoIsolationAvailable",
    "Phase",
    "Process",
    "Runtime",
    "RuntimeError_",
    "RuntimeState",
    "RunscRuntime",
    "SandboxNotRunning",
    "SandboxSpec",
    "SandboxStartFailed",
    "VolumeMount",
    "default_images_dir",
    "make_runtime",
    "sandbox_id",
    "validate_id",
]
