"""Errors of the local runtime, every one naming the sandbox id or image it is about.

The tree (``TurbokError`` is ``turbok.errors``' root)::

    TurbokError
    └── RuntimeError_                 a runtime operation failed
        ├── SandboxNotRunning         spawn/exec on a sandbox that is not running
        ├── InvalidSandboxSpec        a spec the runtime refuses (bad id, volume, network...)
        ├── SandboxStartFailed        runsc/bwrap refused to start it (message: their error)
        ├── NoIsolationAvailable      neither runsc nor bubblewrap works here: nothing runs
        └── ImageError
            ├── ImageNotFound         the reference matches no entry of the image table
            ├── ImageNotBuilt         known reference, but its root filesystem is not on disk
            └── ImageBuildFailed      ``turbok image build-base`` could not build it

Controllers turn these into ``Ready=False`` conditions: the class name is the
reason, the message is the condition's message. ``RuntimeError_`` and
``SandboxNotRunning`` are re-exported by ``turbok.runtime.base`` (the contract).
"""

from __future__ import annotations

from turbok.errors import TurbokError

__all__ = [
    "ImageBuildFailed",
    "ImageError",
    "ImageNotBuilt",
    "ImageNotFound",
    "InvalidSandboxSpec",
    "NoIsolationAvailable",
    "RuntimeError_",
    "SandboxNotRunning",
    "SandboxStartFailed",
]


class RuntimeError_(TurbokError):
    """A runtime operation failed; the message names the sandbox id."""


class SandboxNotRunning(RuntimeError_):
    """``spawn``/``exec`` on a sandbox that is not running."""


class InvalidSandboxSpec(RuntimeError_):
    """The spec cannot be run as given (the message says which field and why)."""


class SandboxStartFailed(RuntimeError_):
    """The isolation tool refused to start the sandbox; the message carries its error."""


class NoIsolationAvailable(RuntimeError_):
    """Neither gVisor nor bubblewrap can run here, so nothing may run at all."""


class ImageError(RuntimeError_):
    """Something is wrong with an image; ``reference`` is the image as the user wrote it."""

    def __init__(self, message: str, *, reference: str) -> None:
        super().__init__(message)
        self.reference = reference


class ImageNotFound(ImageError):
    """No entry of the local image table matches the reference."""


class ImageNotBuilt(ImageError):
    """The reference is known but its root filesystem has not been built yet."""


class ImageBuildFailed(ImageError):
    """Building an image's root filesystem failed."""
