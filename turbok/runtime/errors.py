"""Errors of the local runtime, every one naming the sandbox id or image it is about.

The tree (``TurbokError`` is ``turbok.errors``' root)::

    TurbokError
    └── RuntimeError_                 a runtime operation failed
        ├── SandboxNotRunning         spawn/exec on a sandbox that is not running
        ├── InvalidSandboxSpec        a spec the runtime refuses (bad id, volume, network...)
        ├── SandboxStartFailed        runsc/bwrap refused to start it (message: their error)
        ├── NoIsolationAvailable      neither runsc nor bubblewrap works here: nothing runs
        ├── HibernationUnsupported    this pod cannot be hibernated here (also a NotImplementedError)
        ├── SnapshotUnsupported       this pod cannot be snapshotted here, nothing was touched (also a
        │                             NotImplementedError)
        ├── SnapshotFailed            ``runsc checkpoint`` failed; the message says what became of the pod
        ├── SnapshotNotFound          no complete snapshot of that id on this machine
        ├── SnapshotIncompatible      a pod config that cannot start from that snapshot (an InvalidSandboxSpec)
        └── ImageError
            ├── ImageNotFound         the reference matches no entry of the image table
            │   └── ImageNotPresent   an OCI reference not pulled to this machine (node: ErrImageNeverPull)
            ├── ImageNotBuilt         known reference, but its root filesystem is not on disk
            ├── ImageBuildFailed      ``turbok image build-base`` could not build it
            ├── InvalidImageName      the reference does not parse (node: InvalidImageName)
            ├── ImageInUse            ``turbok image rm`` of an image a running container uses
            └── ImagePullFailed       the registry refused, or what it sent was refused (node: ErrImagePull)
                ├── BlobCorrupt       a blob whose digest is not the one asked for (never stored)
                └── UnsafeLayer       a layer that would write outside its directory, or a device node

Controllers turn these into ``Ready=False`` conditions: the class name is the
reason, the message is the condition's message. The common ones are re-exported
by ``turbok.runtime``.
"""

from __future__ import annotations

from turbok.errors import TurbokError

__all__ = [
    "HibernationUnsupported",
    "ImageBuildFailed",
    "ImageError",
    "ImageNotBuilt",
    "ImageInUse",
    "ImageNotFound",
    "ImageNotPresent",
    "ImagePullFailed",
    "InvalidImageName",
    "BlobCorrupt",
    "UnsafeLayer",
    "InvalidSandboxSpec",
    "NoIsolationAvailable",
    "RuntimeError_",
    "SandboxNotRunning",
    "SandboxStartFailed",
    "SnapshotFailed",
    "SnapshotIncompatible",
    "SnapshotNotFound",
    "SnapshotUnsupported",
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


class HibernationUnsupported(RuntimeError_, NotImplementedError):
    """The runtime cannot keep this pod's memory (bubblewrap; several containers running at once
    under runsc 20221219, which restores one container per sandbox): stop it instead."""


class SnapshotUnsupported(RuntimeError_, NotImplementedError):
    """This pod cannot be snapshotted here (bubblewrap; several containers; a terminal or stdin; an open TCP
    connection, which runsc 20221219 cannot save). Refused before anything was done: the pod runs on."""


class SnapshotFailed(RuntimeError_):
    """Taking a snapshot failed; the message says why and what became of the pod (runsc 20221219 ends a
    sandbox whose checkpoint fails)."""


class SnapshotNotFound(RuntimeError_):
    """No complete snapshot of that id is on this machine."""


class SnapshotIncompatible(InvalidSandboxSpec):
    """A pod whose limits, volumes or shape differ from the snapshot's cannot start from it."""


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


class ImageNotPresent(ImageNotFound):
    """An OCI image reference that has not been pulled to this machine (and the table does not match)."""


class InvalidImageName(ImageError):
    """The reference is not a valid image reference (kubelet: ``InvalidImageName``)."""


class ImageInUse(ImageError):
    """The image is the root filesystem of a running container here."""


class ImagePullFailed(ImageError):
    """Pulling failed: ``str(e)`` is the registry's own message (or what was wrong with what it sent);
    ``status`` the HTTP status when the registry answered one. Credentials never appear in it."""

    def __init__(self, message: str, *, reference: str, status: int | None = None) -> None:
        super().__init__(message, reference=reference)
        self.status = status


class BlobCorrupt(ImagePullFailed):
    """A blob's bytes do not hash to its digest: refused, nothing of it kept."""


class UnsafeLayer(ImagePullFailed):
    """A layer entry that would escape its directory (``..``, a path through a symlink, a hard link out),
    or another entry the store refuses; the layer is not kept."""
