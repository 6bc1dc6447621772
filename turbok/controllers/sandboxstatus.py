"""What a Sandbox's status says, computed from its Pod and Service as upstream's ``computeConditions`` does.

Pure functions. ``pod`` is the Pod the Sandbox resolved (owned or not; None
when there is none), ``pod_error`` an error met while resolving it (the Pod's
state is then unknown), ``errors`` every error of the pass (Ready says
``ReconcilerError: Error seen: ...``; ``MultiplePods`` has its own reason).

- Suspended: False/NotSuspended unless ``operatingMode: Suspended``; then
  True/PodTerminated once the Pod is gone, False/PodTerminating while it
  goes, False/PodNotOwned when a Pod not ours holds the name, Unknown/
  PodStateUnknown when the Pod could not be read.
- Finished: True/PodSucceeded or PodFailed while the owned Pod is terminal; absent otherwise.
- PodScheduled: the owned Pod's PodScheduled condition, copied (empty reasons
  become PodScheduled or PodSchedulingUnknown); absent without a Pod.
- Ready: True/DependenciesReady when the Pod is Running, Ready and has an IP
  (none is needed where ``turbok.dev/network`` says ``none`` or ``loopback``: such
  a Pod never gets one), and the Service exists when one is asked for; else why not, in upstream's
  words. turbok adds ``InvalidConfiguration`` while a container of the Pod
  waits for an image the node will never have (``InvalidImageName``,
  ``ErrImageNeverPull``): the official client gives up at once on it instead of
  waiting for its timeout.
- ``Isolated`` (turbok's own): the Pod's ``turbok.dev/Isolated`` condition (the
  node says which isolation runs the Pod: GVisor or Bubblewrap), while there is one.
- Devices (turbok's own, docs/dra.md): while the Pod cannot be scheduled because
  its ResourceClaims' devices are not free, Ready says ``DevicesUnavailable``
  with the scheduler's words; a Sandbox being resumed (Suspended was True) whose
  Pod names claims stays Suspended=True until that Pod is scheduled, with
  ``DevicesUnavailable`` while it waits for devices: nothing of it runs yet.
"""

from __future__ import annotations

import re
from typing import Any

from turbok.api.podtemplate import on_pod_network
from turbok.controllers import labels as lb
from turbok.errors import TurbokError

__all__ = ["Condition", "MultiplePods", "conditions", "owned_by", "pod_ips"]

Obj = dict[str, Any]
#: (type, status, reason, message)
Condition = tuple[str, str, str, str]

#: Container waiting reasons that no retry will cure without a change to the Pod's spec or the images.
_CONFIGURATION_WAITS = ("InvalidImageName", "ErrImageNeverPull")
#: What kube-scheduler's DRA plugin (and the embedded scheduler, in its words) says of a Pod whose claims
#: cannot be met: "cannot allocate all claims", "device class ... does not exist", "resourceclaim ... not found".
_DEVICE_WORDS = re.compile(r"claim|device", re.I)
DEVICES_UNAVAILABLE = "DevicesUnavailable"


class MultiplePods(TurbokError):
    """More than one Pod is controlled by the Sandbox: it will not choose one, nor create another."""

    def __init__(self, count: int) -> None:
        super().__init__(f"multiple Pods ({count}) are controlled by this Sandbox; refusing to choose or "
                         "create a Pod")


def owned_by(obj: Obj | None, sandbox: Obj) -> bool:
    ref = lb.controller_of(obj) if obj is not None else None
    return ref is not None and ref.get("uid") == sandbox["metadata"]["uid"]


def pod_ips(pod: Obj) -> list[str]:
    return [entry["ip"] for entry in (pod.get("status") or {}).get("podIPs") or [] if entry.get("ip")]


def _pod_condition(pod: Obj, type_: str) -> Obj | None:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


def _names_claims(pod: Obj) -> bool:
    return bool((pod.get("spec") or {}).get("resourceClaims"))


def _waiting_for_devices(sandbox: Obj, pod: Obj | None) -> str | None:
    """The scheduler's message while the owned Pod cannot be scheduled for want of its claims' devices."""
    if pod is None or not owned_by(pod, sandbox) or not _names_claims(pod) or (pod.get("spec") or {}).get("nodeName"):
        return None
    cond = _pod_condition(pod, "PodScheduled")
    if cond is None or cond.get("status") != "False" or cond.get("reason") != "Unschedulable":
        return None
    message = str(cond.get("message") or "")
    return message if _DEVICE_WORDS.search(message) else None


def _resuming(sandbox: Obj, pod: Obj | None) -> Condition | None:
    """Suspended=True kept while a resumed Sandbox's Pod with claims is not scheduled yet; None otherwise."""
    previous = next((c for c in (sandbox.get("status") or {}).get("conditions") or []
                     if c.get("type") == "Suspended"), None)
    if previous is None or previous.get("status") != "True":
        return None
    if pod is None or not owned_by(pod, sandbox) or not _names_claims(pod) or (pod.get("spec") or {}).get("nodeName"):
        return None
    waiting = _waiting_for_devices(sandbox, pod)
    if waiting is not None:
        return ("Suspended", "True", DEVICES_UNAVAILABLE,
                f"Sandbox stays suspended until its devices are free: {waiting}")
    return ("Suspended", "True", str(previous.get("reason") or "PodTerminated"), str(previous.get("message") or ""))


def _suspended(sandbox: Obj, pod: Obj | None, pod_error: bool) -> Condition:
    if (sandbox.get("spec") or {}).get("operatingMode") != "Suspended":
        resuming = _resuming(sandbox, pod)
        if resuming is not None:
            return resuming
        return ("Suspended", "False", "NotSuspended", "Sandbox is not suspended")
    if pod is None and pod_error:
        return ("Suspended", "Unknown", "PodStateUnknown", "Pod state is unknown. Sandbox suspension cannot be "
                "confirmed")
    if pod is None:
        return ("Suspended", "True", "PodTerminated", "Pod has been terminated. Sandbox is suspended")
    if not owned_by(pod, sandbox):
        return ("Suspended", "False", "PodNotOwned", "Refused to delete pod because it is not owned by this sandbox")
    return ("Suspended", "False", "PodTerminating", "Pod is terminating. Sandbox is suspending")


def _finished(sandbox: Obj, pod: Obj | None) -> Condition | None:
    if pod is None or not owned_by(pod, sandbox):
        return None
    phase = (pod.get("status") or {}).get("phase")
    if phase == "Succeeded":
        return ("Finished", "True", "PodSucceeded", "Pod completed successfully")
    if phase == "Failed":
        return ("Finished", "True", "PodFailed", "Pod failed")
    return None


def _pod_scheduled(sandbox: Obj, pod: Obj | None, pod_error: bool) -> Condition | None:
    if pod is None and pod_error:
        return ("PodScheduled", "Unknown", "PodSchedulingUnknown",
                "Pod state is unknown. Pod scheduling cannot be determined")
    if pod is None or not owned_by(pod, sandbox):
        return None
    cond = _pod_condition(pod, "PodScheduled")
    if cond is None:
        return ("PodScheduled", "Unknown", "PodSchedulingUnknown", "Pod has not reported a PodScheduled condition yet")
    status = cond.get("status") or "Unknown"
    reason = cond.get("reason") or ("PodScheduled" if status == "True" else "PodSchedulingUnknown")
    return ("PodScheduled", status, reason, cond.get("message") or "")


def _configuration_wait(pod: Obj) -> str | None:
    status = pod.get("status") or {}
    for entry in (*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())):
        waiting = (entry.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _CONFIGURATION_WAITS:
            return f'container "{entry.get("name")}": {waiting["reason"]}: {waiting.get("message") or ""}'.rstrip(": ")
    return None


def _creating_failure(pod: Obj) -> str | None:
    """What the node said of a pod sandbox it could not create (a full disk...): turbok's node puts it in
    PodReadyToStartContainers' message (the kubelet only in an Event)."""
    cond = _pod_condition(pod, "PodReadyToStartContainers")
    if cond is not None and cond.get("status") == "False" and cond.get("message"):
        return str(cond["message"])
    return None


def _pull_failure(pod: Obj) -> str | None:
    """A container whose image cannot be pulled (the node retries with back-off, as the kubelet)."""
    status = pod.get("status") or {}
    for entry in (*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())):
        waiting = (entry.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff"):
            return f'container "{entry.get("name")}": {waiting["reason"]}: {waiting.get("message") or ""}'.rstrip(": ")
    return None


def _ready(sandbox: Obj, errors: list[BaseException], service: Obj | None, pod: Obj | None) -> Condition:
    if errors:
        multiple = next((e for e in errors if isinstance(e, MultiplePods)), None)
        if multiple is not None:
            return ("Ready", "False", "MultiplePods", str(multiple))
        return ("Ready", "False", "ReconcilerError", "Error seen: " + "\n".join(str(e) for e in errors))
    spec = sandbox.get("spec") or {}
    if spec.get("operatingMode") == "Suspended":
        return ("Ready", "False", "SandboxSuspended", "Sandbox is suspending" if pod is not None
                else "Sandbox is suspended")
    ready = False
    if pod is not None:
        phase = (pod.get("status") or {}).get("phase") or ""
        if phase == "Succeeded":
            return ("Ready", "False", "PodSucceeded", "Pod completed successfully")
        if phase == "Failed":
            return ("Ready", "False", "PodFailed", "Pod failed")
        message = f"Pod exists with phase: {phase}"
        if phase == "Running":
            message = "Pod is Running but not Ready"
            cond = _pod_condition(pod, "Ready")
            if cond is not None and cond.get("status") == "True":
                if pod_ips(pod) or not on_pod_network((pod.get("metadata") or {}).get("annotations") or {}):
                    message, ready = "Pod is Ready", True
                else:
                    message = "Pod is Ready but has no podIPs yet"
        if not ready and (failure := _creating_failure(pod) or _pull_failure(pod)) is not None:
            message += f"; {failure}"  # upstream's words, and why a retry has not helped yet
        if not ready and (why := _configuration_wait(pod)) is not None:
            return ("Ready", "False", "InvalidConfiguration", why)
        if (waiting := _waiting_for_devices(sandbox, pod)) is not None:
            return ("Ready", "False", DEVICES_UNAVAILABLE, f"Pod waits for devices: {waiting}")
    else:
        message = "Pod does not exist"
    wanted = spec.get("service")
    if wanted is True or (wanted is None and service is not None):  # an existing Service must be there
        message += "; Service Exists" if service is not None else "; Service does not exist"
        ready = ready and service is not None
    if ready:
        return ("Ready", "True", "DependenciesReady", message)
    return ("Ready", "False", "DependenciesNotReady", message)


def _isolated(pod: Obj | None, sandbox: Obj) -> Condition | None:
    if pod is None or not owned_by(pod, sandbox):
        return None
    cond = _pod_condition(pod, lb.POD_ISOLATED)
    if cond is None:
        return None
    return ("Isolated", cond.get("status") or "Unknown", cond.get("reason") or "Unknown", cond.get("message") or "")


def conditions(sandbox: Obj, *, pod: Obj | None, pod_error: bool, errors: list[BaseException],
               service: Obj | None) -> tuple[list[Condition], set[str]]:
    """The conditions to set, and those to remove (Finished and PodScheduled exist only while they apply)."""
    out: list[Condition] = [_suspended(sandbox, pod, pod_error)]
    remove = {"Finished", "PodScheduled"}
    for cond in (_finished(sandbox, pod), _pod_scheduled(sandbox, pod, pod_error)):
        if cond is not None:
            out.append(cond)
            remove.discard(cond[0])
    out.append(_ready(sandbox, errors, service, pod))
    if (isolated := _isolated(pod, sandbox)) is not None:
        out.append(isolated)
    return out, remove
