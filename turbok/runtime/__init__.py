"""How a Pod runs on this machine.

Owns: the pod runtime contract (``cri``: ``PodRuntime``, shaped like the
Kubernetes CRI, what the node uses; ``Isolation``, ``WORKDIR_MOUNT``) and its
implementations (``pods``, the shared part; ``pods_gvisor``: one runsc sandbox per
Pod; ``pods_bubblewrap``: the fallback), picked by ``factory.make_pod_runtime``;
their ids (``ids``), layout (``podlayout``), bundles (``podbundle``), volumes
(``podvolumes``), stdin/terminals and streams (``podio``) and CRI logs (``crilog``;
raw output rotation: ``logs``); each pod's own bounded disk (``disk``, on a loop
device: ``loopdev``; host mounts: ``mounts``), its containers' root filesystems
(``overlay``) and cgroups (``cgroups``); per-key locks (``locks``); the pod network
(``network``, ``ipam``, ``netns``, ``netlink``; per-pod policy rules
``network_policy`` through libnftables ``network_nft``; the pods' resolver
``network_dns``); snapshots (``snapshotstore``); images (``images``: the local
image table; ``imagestore``, ``layers``, ``imageconfig``, ``reference``,
``registry``: OCI images pulled from registries; ``base_image``: building the
built-in base image); what is injected into a Pod (``injection``); process
plumbing (``process``: ``Process``, capped output, timeouts; ``orphans``: the
sandboxes this process adopts and reaps; ``teardown``: the threads teardowns
block in); the errors
(``errors``); and the sandboxes of the old, per-Sandbox runtime that a pod has
not taken over yet (``legacy``: stop and remove only).

Does not own: what a Sandbox object means (``turbok.controllers``), what runs on
a node (``turbok.node``) or how requests reach a sandbox (``turbok.sandboxd``).
Never imports controllers, the node, the store or the apiserver. See docs/runtime.md.
"""

from turbok.runtime.cri import WORKDIR_MOUNT, Isolation
from turbok.runtime.errors import (
    HibernationUnsupported,
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
from turbok.runtime.factory import make_pod_runtime
from turbok.runtime.ids import sandbox_id, validate_id
from turbok.runtime.images import BASE_IMAGE, ImageStore, default_images_dir
from turbok.runtime.pods_bubblewrap import BubblewrapPodRuntime
from turbok.runtime.pods_gvisor import GvisorPodRuntime
from turbok.runtime.process import DEFAULT_OUTPUT_LIMIT, ExecResult, Process

__all__ = [
    "BASE_IMAGE",
    "DEFAULT_OUTPUT_LIMIT",
    "WORKDIR_MOUNT",
    "BubblewrapPodRuntime",
    "ExecResult",
    "GvisorPodRuntime",
    "HibernationUnsupported",
    "ImageBuildFailed",
    "ImageError",
    "ImageNotBuilt",
    "ImageNotFound",
    "ImageStore",
    "InvalidSandboxSpec",
    "Isolation",
    "NoIsolationAvailable",
    "Process",
    "RuntimeError_",
    "SandboxNotRunning",
    "SandboxStartFailed",
    "default_images_dir",
    "make_pod_runtime",
    "sandbox_id",
    "validate_id",
]
