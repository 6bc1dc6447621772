"""The node's image manager (turbok.node.images) over a scripted image service: the kubelet's reasons and events."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from tests.unit.node.conftest import NodeHarness, container_status, pod
from turbok.runtime.errors import ImageNotPresent, ImagePullFailed
from turbok.runtime.imageconfig import ImageConfig
from turbok.runtime.images import PullResult, ResolvedImage
from turbok.runtime.reference import parse


class ScriptedImages:
    """An ``ImageStore`` stand-in: images ``present``, pulls that fail while ``failures`` lasts."""

    def __init__(self, *, user: str = "") -> None:
        self.present: set[str] = set()
        self.failures = 0
        self.pulls: list[tuple[str, str, list[bytes]]] = []
        self.user = user

    def _image(self, ref: str) -> ResolvedImage:
        cfg = ImageConfig(user=self.user)
        return ResolvedImage(reference=ref, name=parse(ref).name, rootfs=Path("/nonexistent"), command=("sleep",),
                             env={}, working_dir="/", user=self.user, digest=f"{parse(ref).name}@sha256:{'a' * 64}",
                             config=cfg)

    def resolve(self, ref: str) -> ResolvedImage:
        if ref not in self.present:
            raise ImageNotPresent(f"{ref} absent", reference=ref)
        return self._image(ref)

    def pull(self, ref: str, *, policy: str | None = None, pull_secrets: Any = (), progress: Any = None) -> PullResult:
        parse(ref)
        self.pulls.append((ref, str(policy), list(pull_secrets)))
        if ref in self.present and policy != "Always":
            return PullResult(self._image(ref), pulled=False)
        if policy == "Never":
            raise ImageNotPresent(f'Container image "{ref}" is not present with pull policy of Never', reference=ref)
        if self.failures:
            self.failures -= 1
            raise ImagePullFailed(f'failed to pull image "{ref}": registry.test answered 404: MANIFEST_UNKNOWN: '
                                  "manifest unknown", reference=ref, status=404)
        self.present.add(ref)
        return PullResult(self._image(ref), pulled=True, size=1234)


def waiting(p: dict[str, Any]) -> dict[str, Any]:
    return dict(container_status(p, "main")["state"].get("waiting") or {})


def images_of(node: NodeHarness, service: ScriptedImages) -> ScriptedImages:
    node.runtime.images = service  # type: ignore[assignment]
    return service


async def test_err_image_pull_then_back_off_then_pulled(node: NodeHarness) -> None:
    svc = images_of(node, ScriptedImages())
    svc.failures = 2
    node.create(pod("p", containers=[{"name": "main", "image": "registry.test/app:1"}]))
    got = await node.wait_pod("p", lambda p: waiting(p).get("reason") == "ErrImagePull")
    assert "MANIFEST_UNKNOWN: manifest unknown" in waiting(got)["message"]
    await node.clock.advance(1.0)  # the kubelet's next sync shows the back-off
    got = await node.wait_pod("p", lambda p: waiting(p).get("reason") == "ImagePullBackOff")
    assert waiting(got)["message"].startswith('Back-off pulling image "registry.test/app:1": ErrImagePull: ')
    await node.settle()
    assert 'Failed to pull image "registry.test/app:1"' in node.events("p", "Failed")[0]["message"]
    assert node.events("p", "BackOff") and node.events("p", "Pulling")
    assert len(svc.pulls) == 1  # nothing pulled while the back-off runs
    await node.clock.advance(9.0)  # the first back-off: 10 s
    await node.wait_pod("p", lambda p: waiting(p).get("reason") == "ErrImagePull" and len(svc.pulls) == 2)
    await node.clock.advance(20.0)  # then 20 s
    await node.wait_ready("p")
    await node.settle()
    pulled = node.events("p", "Pulled")[-1]["message"]
    assert pulled.startswith('Successfully pulled image "registry.test/app:1" in ') and "1234 bytes" in pulled


async def test_never_and_present_and_default_policy(node: NodeHarness) -> None:
    svc = images_of(node, ScriptedImages())
    node.create(pod("never", containers=[{"name": "main", "image": "registry.test/a:1", "imagePullPolicy": "Never"}]))
    got = await node.wait_pod("never", lambda p: waiting(p).get("reason") == "ErrImageNeverPull")
    assert waiting(got)["message"] == 'Container image "registry.test/a:1" is not present with pull policy of Never'
    svc.present.add("registry.test/b:1")
    node.create(pod("here", containers=[{"name": "main", "image": "registry.test/b:1"}]))
    await node.wait_ready("here")
    await node.settle()
    assert node.events("here", "Pulled")[0]["message"] == 'Container image "registry.test/b:1" already present on machine'
    assert not node.events("here", "Pulling")
    assert ("registry.test/b:1", "IfNotPresent", []) in svc.pulls
    node.create(pod("latest", containers=[{"name": "main", "image": "registry.test/c"}]))
    await node.wait_ready("latest")
    assert ("registry.test/c", "Always", []) in svc.pulls


async def test_invalid_image_name(node: NodeHarness) -> None:
    images_of(node, ScriptedImages())
    node.create(pod("bad", containers=[{"name": "main", "image": "registry.test/Bad:1"}]))
    got = await node.wait_pod("bad", lambda p: waiting(p).get("reason") == "InvalidImageName")
    assert "couldn't parse image name" in waiting(got)["message"]


async def test_pull_secrets_are_read_from_the_pods_namespace(node: NodeHarness) -> None:
    svc = images_of(node, ScriptedImages())
    doc = json.dumps({"auths": {"registry.test": {"auth": base64.b64encode(b"u:p").decode()}}}).encode()
    node.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred", "namespace": "default"},
                 "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": base64.b64encode(doc).decode()}})
    node.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "opaque", "namespace": "default"},
                 "type": "Opaque", "data": {"x": "eA=="}})
    node.create(pod("sec", containers=[{"name": "main", "image": "registry.test/p:1"}],
                    imagePullSecrets=[{"name": "regcred"}, {"name": "opaque"}, {"name": "absent"}]))
    await node.wait_ready("sec")
    assert svc.pulls[0][2] == [doc]
    await node.settle()
    [warn] = node.events("sec", "FailedToRetrieveImagePullSecret")
    assert "(opaque, absent)" in warn["message"] and warn["type"] == "Warning"


async def test_run_as_non_root_is_checked_against_the_images_user(node: NodeHarness) -> None:
    images_of(node, ScriptedImages(user=""))  # no USER: root
    ctx = {"securityContext": {"runAsNonRoot": True}}
    node.create(pod("root", containers=[{"name": "main", "image": "registry.test/r:1", **ctx}]))
    got = await node.wait_pod("root", lambda p: waiting(p).get("reason") == "CreateContainerConfigError")
    assert "image will run as root" in waiting(got)["message"]
    images_of(node, ScriptedImages(user="1000"))
    node.create(pod("user", containers=[{"name": "main", "image": "registry.test/u:1", **ctx}]))
    await node.wait_ready("user")
    images_of(node, ScriptedImages(user="app"))
    node.create(pod("named", containers=[{"name": "main", "image": "registry.test/n:1", **ctx}]))
    got = await node.wait_pod("named", lambda p: waiting(p).get("reason") == "CreateContainerConfigError")
    assert "non-numeric user" in waiting(got)["message"]
