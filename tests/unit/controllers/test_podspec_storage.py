"""The pod template's ephemeral-storage limit becomes the sandbox's disk size."""

from __future__ import annotations

from typing import Any

from turbok.controllers.podspec import plan_pod


def plan(limits: dict[str, Any] | None) -> Any:
    container: dict[str, Any] = {"name": "main", "image": "python-runtime-sandbox"}
    if limits is not None:
        container["resources"] = {"limits": limits}
    return plan_pod(sandbox_id="tk" + "0" * 22, name="box", pod_template={"spec": {"containers": [container]}}).spec


def test_ephemeral_storage_limit_is_the_disk_size_and_absent_means_the_runtime_default() -> None:
    assert plan({"ephemeral-storage": "2Gi"}).ephemeral_storage_bytes == 2 * 2**30
    assert plan({"ephemeral-storage": "500M", "memory": "1Gi"}).ephemeral_storage_bytes == 500 * 10**6
    assert plan(None).ephemeral_storage_bytes is None
    assert plan({"cpu": "1"}).ephemeral_storage_bytes is None
