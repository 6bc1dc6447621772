"""From a Sandbox's pod template to the runtime's ``SandboxSpec``.

The embedded engine runs one container per sandbox: the first of
``containers`` (its command, args, env, workingDir, limits and volume mounts).
A template is first checked by ``turbok.api.podtemplate`` (the validator the
API's admission uses, for objects stored before it did). What a single
machine cannot honour is refused with a reason a user can act on
(``InvalidPodTemplate.reason`` becomes the Ready condition's reason), never
silently dropped: secrets from ``valueFrom``, multiple containers. Init
containers are not run; the Sandbox says so in its status message.

Limits: the container's cpu and memory limits (``0``: none, as for the
kubelet), else turbok's built-in defaults (``turbok.api.limitrange``; the API
writes them into new Sandboxes, this covers older ones); the pids limit from
the template's ``turbok.dev/pids-limit`` annotation, else the runtime's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from turbok.api.limitrange import apply_builtin_defaults
from turbok.api.podtemplate import NETWORK_ANNOTATION, pids_limit, validate_pod_template
from turbok.api.quantity import QuantityError, cpu_millis, to_bytes
from turbok.errors import TurbokError
from turbok.runtime.base import SandboxSpec, VolumeMount

__all__ = ["NETWORK_ANNOTATION", "InvalidPodTemplate", "PodPlan", "plan_pod"]

Obj = dict[str, Any]

class InvalidPodTemplate(TurbokError):
    def __init__(self, message: str, reason: str = "InvalidConfiguration") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PodPlan:
    spec: SandboxSpec
    notes: tuple[str, ...] = ()


def _env(container: Obj) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "value" in var or "valueFrom" not in var:
            env[var["name"]] = str(var.get("value", ""))
            continue
        source = var["valueFrom"]
        ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
        if ref is not None and ref.get("optional"):
            continue  # an optional reference to something that does not exist here
        raise InvalidPodTemplate(
            f"env {var['name']!r} takes its value from {next(iter(source))}, which the embedded engine does not "
            "have; set `value`, or mark the reference optional")
    return env


def plan_pod(*, sandbox_id: str, name: str, pod_template: Obj, extra_env: dict[str, str] | None = None,
             claim_volumes: tuple[str, ...] = ()) -> PodPlan:
    causes = validate_pod_template(pod_template, "spec.podTemplate", claim_volumes=claim_volumes)
    if causes:
        raise InvalidPodTemplate("; ".join(f"{c.field}: {c.message}" for c in causes))
    spec: Obj = pod_template.get("spec") or {}
    containers: list[Obj] = spec.get("containers") or []
    if not containers:
        raise InvalidPodTemplate("spec.podTemplate.spec.containers is empty")
    if len(containers) > 1:
        raise InvalidPodTemplate(f"{len(containers)} containers given; the embedded engine runs one container per "
                                 "sandbox")
    container = containers[0]
    if not container.get("image"):
        raise InvalidPodTemplate("the container has no image")
    env = _env(container)
    env.update(extra_env or {})
    limited = copy.deepcopy(container)
    apply_builtin_defaults({"containers": [limited]})
    limits: Obj = limited["resources"]["limits"]
    try:
        cpu = cpu_millis(limits["cpu"]) or None  # 0: no limit
        memory = to_bytes(limits["memory"]) or None
        # The pod's disk: the sum of its containers' ephemeral-storage limits, as the kubelet counts it.
        storage = [to_bytes(v) for c in (limited, *containers[1:])
                   if (v := ((c.get("resources") or {}).get("limits") or {}).get("ephemeral-storage")) is not None]
    except QuantityError as e:
        raise InvalidPodTemplate(f"resources.limits: {e}") from e
    volumes = [VolumeMount(name=m["name"], mount_path=m["mountPath"], read_only=bool(m.get("readOnly")))
               for m in container.get("volumeMounts") or []]
    notes = []
    if spec.get("initContainers"):
        notes.append(f"{len(spec['initContainers'])} initContainers not run (the embedded engine runs the main "
                     "container only)")
    network = ((pod_template.get("metadata") or {}).get("annotations") or {}).get(NETWORK_ANNOTATION, "none")
    if network not in ("none", "loopback"):
        raise InvalidPodTemplate(f"annotation {NETWORK_ANNOTATION}={network!r}: use none or loopback")
    return PodPlan(
        spec=SandboxSpec(
            id=sandbox_id,
            hostname=name[:63].rstrip("-.") or "sandbox",
            image=container["image"],
            command=tuple(container.get("command") or ()),
            args=tuple(container.get("args") or ()),
            env=env,
            working_dir=container.get("workingDir"),
            cpu_millis=cpu,
            memory_bytes=memory,
            pids_limit=pids_limit(pod_template),
            network=network,
            volumes=tuple(volumes),
            ephemeral_storage_bytes=sum(storage) if storage else None,
        ),
        notes=tuple(notes),
    )
