"""The node's image manager: making a container's image present, as the kubelet's does.

``ensure_image(ctx, pod, container, now=...)`` runs before a container starts:

- the image service is the runtime's (``PodRuntime.images``, a
  ``turbok.runtime.images.ImageStore``); a runtime without one (a test double)
  gets the old behaviour: ``None``, nothing pulled;
- the pull policy is the container's ``imagePullPolicy``, else the kubelet's default
  for its reference (``Always`` for ``:latest`` or no tag);
- the logins are the Pod's ``imagePullSecrets``: Secrets of type
  ``kubernetes.io/dockerconfigjson`` (``.dockerconfigjson``) or ``kubernetes.io/dockercfg``
  in the Pod's namespace; one that is missing or of another type is a
  ``FailedToRetrieveImagePullSecret`` Warning and is skipped, as the kubelet does;
- the pull runs off the event loop (``asyncio.to_thread``), so a slow registry never
  stalls other Pods.

Outcomes, with the kubelet's reasons and Events: present (``Pulled``: already present on
machine); pulled (``Pulling``, then ``Pulled``: successfully pulled in ...); ``Never`` and
absent (waiting ``ErrImageNeverPull``); a reference that does not parse
(``InvalidImageName``); a failed pull (waiting ``ErrImagePull`` with the registry's
message, ``Failed`` Events), then while its back-off runs (10 s doubling to 5 min, per
container) waiting ``ImagePullBackOff`` and a ``BackOff`` Event. The result is the
``ResolvedImage`` (its ``policy_uid`` is what ``runAsNonRoot`` is checked against), or the
seconds to wait before trying again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from turbok.api.kinds import SECRET
from turbok.api.status import ApiError
from turbok.node.client import Obj
from turbok.node.containers import ContainerRecord
from turbok.node.context import NodeContext
from turbok.node.env import secret_data
from turbok.runtime.errors import ImageError, ImageNotPresent, ImagePullFailed, InvalidImageName
from turbok.runtime.images import ImageStore, PullResult, ResolvedImage
from turbok.runtime.reference import default_pull_policy

__all__ = ["ensure_image", "pull_secrets"]

log = logging.getLogger("turbok.node")

#: How soon a failed pull's ``ErrImagePull`` turns into ``ImagePullBackOff`` (the kubelet's next sync).
BACKOFF_SHOWN_AFTER = 1.0
_SECRET_KEYS = {"kubernetes.io/dockerconfigjson": ".dockerconfigjson", "kubernetes.io/dockercfg": ".dockercfg"}


async def pull_secrets(ctx: NodeContext, pod: Obj) -> tuple[list[bytes], list[str]]:
    """The login documents of the Pod's ``imagePullSecrets``, and the names that could not be used."""
    ns = (pod.get("metadata") or {}).get("namespace") or "default"
    docs, missing = [], []
    for ref in (pod.get("spec") or {}).get("imagePullSecrets") or []:
        name = ref.get("name") if isinstance(ref, dict) else None
        if not name:
            continue
        try:
            secret = await ctx.client.try_get(SECRET, ns, str(name))
        except ApiError:
            secret = None
        key = _SECRET_KEYS.get(str((secret or {}).get("type") or ""))
        data = secret_data(secret).get(key) if secret is not None and key else None
        if data:
            docs.append(data)
        else:
            missing.append(str(name))
    return docs, missing


def _waiting(c: ContainerRecord, reason: str, message: str) -> None:
    c.view.state = {"waiting": {"reason": reason, "message": message}}


async def ensure_image(ctx: NodeContext, pod: Obj, c: ContainerRecord, *, now: float) -> ResolvedImage | float | None:
    """Make ``c``'s image present (see the module docstring): the image, seconds to wait, or None (no image
    service: the runtime resolves the image itself when it starts the container)."""
    images = ctx.runtime.images
    if images is None:
        return None
    image = str(c.spec.get("image") or "")
    policy = str(c.spec.get("imagePullPolicy") or "") or default_pull_policy(image)
    backoff = c.image_backoff
    if policy != "Never" and backoff.waiting(now) > 0 and c.view.state.get("waiting", {}).get("reason") in (
            "ErrImagePull", "ImagePullBackOff"):
        last = c.view.state["waiting"].get("message", "")
        if not last.startswith("Back-off pulling image"):
            last = f'Back-off pulling image "{image}": ErrImagePull: {last}'
        _waiting(c, "ImagePullBackOff", last)
        ctx.events.record(pod, "BackOff", f'Back-off pulling image "{image}"', field_path=c.field_path)
        return backoff.waiting(now)
    secrets, missing = await pull_secrets(ctx, pod)
    if missing:
        ctx.events.record(pod, "FailedToRetrieveImagePullSecret", "Unable to retrieve some image pull secrets "
                          f"({', '.join(missing)}); attempting to pull the image may not succeed.", warning=True)
    started = time.monotonic()
    announced = False

    def pull() -> PullResult:
        assert images is not None
        return images.pull(image, policy=policy, pull_secrets=secrets)

    try:
        if policy != "Never" and (policy == "Always" or not await asyncio.to_thread(_present, images, image)):
            ctx.events.record(pod, "Pulling", f'Pulling image "{image}"', field_path=c.field_path)
            announced = True
        result = await asyncio.to_thread(pull)
    except InvalidImageName as e:
        _waiting(c, "InvalidImageName", str(e))
        ctx.events.record(pod, "InspectFailed", str(e), warning=True, field_path=c.field_path)
        return _retry(c, now, 60.0)
    except ImageNotPresent as e:
        message = f'Container image "{image}" is not present with pull policy of Never'
        _waiting(c, "ErrImageNeverPull", message if policy == "Never" else str(e))
        ctx.events.record(pod, "ErrImageNeverPull", message if policy == "Never" else str(e), warning=True,
                          field_path=c.field_path)
        return _retry(c, now, backoff.base)
    except (ImagePullFailed, ImageError) as e:
        backoff.delay = min(backoff.base * 2 ** backoff.consecutive, backoff.cap)
        backoff.consecutive += 1
        backoff.until = now + backoff.delay
        _waiting(c, "ErrImagePull", str(e))
        ctx.events.record(pod, "Failed", f'Failed to pull image "{image}": {e}', warning=True, field_path=c.field_path)
        ctx.events.record(pod, "Failed", "Error: ErrImagePull", warning=True, field_path=c.field_path)
        log.info("pod %s/%s: pulling %s failed: %s", (pod.get("metadata") or {}).get("namespace"),
                 (pod.get("metadata") or {}).get("name"), image, e)
        return _retry(c, now, min(BACKOFF_SHOWN_AFTER, backoff.delay))
    backoff.consecutive, backoff.until, backoff.delay = 0, 0.0, 0.0
    if result.pulled or announced:
        took = time.monotonic() - started
        ctx.events.record(pod, "Pulled", f'Successfully pulled image "{image}" in {took:.3f}s ({took:.3f}s including '
                          f"waiting). Image size: {result.size} bytes.", field_path=c.field_path)
    else:
        ctx.events.record(pod, "Pulled", f'Container image "{image}" already present on machine',
                          field_path=c.field_path)
    return result.image


def _present(images: ImageStore, image: str) -> bool:
    try:
        images.resolve(image)
    except ImageError:
        return False
    return True


def _retry(c: ContainerRecord, now: float, delay: float) -> float:
    c.retry_at = now + delay
    return delay
