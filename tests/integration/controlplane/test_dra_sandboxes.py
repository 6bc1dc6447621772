"""Sandboxes with accelerators on the embedded engine, under gVisor (docs/dra.md): ``turbok serve
--simulated-gpus 1``, a SandboxTemplate whose podTemplate names a ResourceClaimTemplate.

The warm pool keeps no sandbox (the template does not say hold), so claims start cold; the first gets the GPU
and sees it, the second waits (``DevicesUnavailable``); suspending the first releases the GPU to the second;
resuming the first keeps it Suspended, with the reason, until the second goes; then it resumes with its memory,
processes and disk and sees the GPU again. Per-device allocation follows on ``/metrics``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ControlPlaneProcess
from tests.integration.controlplane.conftest import Kube, claim, pool, template
from tests.integration.controlplane.test_lifecycle import RECALL, REMEMBER

pytestmark = pytest.mark.integration

RES = "resource.k8s.io/v1"


@pytest.fixture
def gpu_kube(make_control_plane: Callable[..., ControlPlaneProcess], monkeypatch: pytest.MonkeyPatch) -> Iterator[Kube]:
    # A short plugin directory of this control plane's own (a Unix socket path has 108 bytes; never the host's).
    sockets = Path(tempfile.mkdtemp(prefix="kubelet", dir="/tmp"))
    monkeypatch.setenv("TURBOK_KUBELET_DIR", str(sockets))
    k = Kube(make_control_plane(args=("--simulated-gpus", "1")), "default")
    try:
        yield k
    finally:
        k.close()
        shutil.rmtree(sockets, ignore_errors=True)


def visible(kube: Kube, name: str) -> str:
    with kube.connect(name) as conn:
        done = conn.commands.run("echo devices=$TURBOK_VISIBLE_DEVICES")
    assert done.exit_code == 0, done.stderr
    return str(done.stdout).strip()


def allocated(cp: ControlPlaneProcess) -> dict[str, float]:
    text = httpx.get(f"{cp.api_url}/metrics", headers={"Authorization": f"Bearer {cp.token}"}, verify=False).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("turbok_dra_device_allocations{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('device="')[1].split('"')[0]] = float(value)
    return out


def ready_reason(kube: Kube, name: str) -> Any:
    cond = kube.condition(kube.sandbox, name)
    return cond and cond["reason"]


def test_sandboxes_take_release_and_wait_for_their_gpu(gpu_kube: Kube) -> None:
    kube = gpu_kube
    kube.create({"apiVersion": RES, "kind": "ResourceClaimTemplate", "metadata": {"name": "one-gpu"},
                 "spec": {"spec": {"devices": {"requests": [{"name": "gpu",
                                                             "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}}}})
    tpl = template("gpu")
    spec = tpl["spec"]["podTemplate"]["spec"]
    spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}]
    spec["containers"][0]["resources"]["claims"] = [{"name": "gpu"}]
    kube.create(tpl)
    kube.create(pool("gpus", "gpu", replicas=1))
    kube.create(claim("first", "gpus"))
    kube.wait_condition(kube.sandbox, "first", timeout=60)
    assert visible(kube, "first") == "devices=gpu-0"
    assert [s["metadata"]["name"] for s in kube.api.list(kube.sandbox, kube.ns)["items"]] == ["first"]  # no warm one
    assert allocated(kube.cp)["gpu-0"] == 1

    kube.create(claim("second", "gpus"))
    kube.wait(lambda: ready_reason(kube, "second") == "DevicesUnavailable", timeout=30, what="second waits")

    # Suspending the first releases the GPU: the second gets it.
    with kube.connect("first") as conn:
        conn.files.write("note.txt", b"kept")
        assert conn.commands.run(REMEMBER).exit_code == 0
    kube.api.patch(kube.sandbox, "first", {"spec": {"operatingMode": "Suspended"}}, kube.ns)
    kube.wait_condition(kube.sandbox, "first", "Suspended", reason="PodTerminated", timeout=60)
    kube.wait_condition(kube.sandbox, "second", timeout=60)
    assert visible(kube, "second") == "devices=gpu-0"

    # Resuming the first: no GPU is free, so it stays Suspended, saying why.
    kube.api.patch(kube.sandbox, "first", {"spec": {"operatingMode": "Running"}}, kube.ns)
    waiting = kube.wait_condition(kube.sandbox, "first", "Suspended", reason="DevicesUnavailable", timeout=30)
    message = next(c for c in waiting["status"]["conditions"] if c["type"] == "Suspended")["message"]
    assert "cannot allocate all claims" in message

    # The second goes: the first resumes, with its disk, and sees the GPU.
    kube.api.delete(kube.claim, "second", kube.ns)
    kube.wait_condition(kube.sandbox, "first", timeout=90)
    assert kube.condition(kube.sandbox, "first", "Suspended")["status"] == "False"
    assert visible(kube, "first") == "devices=gpu-0"
    with kube.connect("first") as conn:
        assert conn.files.read("note.txt") == b"kept"
        assert conn.commands.run(RECALL).stdout.split() == ["in-memory", "layer", "alive"]  # hibernated, restored
    kube.wait(lambda: allocated(kube.cp).get("gpu-0") == 1, timeout=10, what="gpu-0 allocated once")
