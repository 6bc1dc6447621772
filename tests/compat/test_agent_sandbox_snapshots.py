"""The official client's Pod Snapshot extension (``k8s_agent_sandbox.gke_extensions.snapshots``), unchanged, against
turbok's embedded control plane: snapshots taken, listed, a suspend and a resume from the newest, a restore to an
older one, deletion. What a sandbox holds is checked from inside: a file on its disk (/app) and one in its memory
(/dev/shm, a tmpfs inside the gVisor sandbox)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from k8s_agent_sandbox.gke_extensions.snapshots import PodSnapshotSandboxClient
from k8s_agent_sandbox.models import SandboxDirectConnectionConfig
from kubernetes import client as kclient
from kubernetes import config

from tests.conftest import ControlPlaneProcess

pytestmark = pytest.mark.integration

NS = "compat-snapshots"
EXT = ("extensions.agents.x-k8s.io", "v1beta1")


@pytest.fixture(scope="module")
def api(control_plane: ControlPlaneProcess) -> Iterator[kclient.ApiClient]:
    api = config.new_client_from_config(str(control_plane.kubeconfig))
    core = kclient.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NS}})
    objects = kclient.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(*EXT, NS, "sandboxtemplates", {
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
        "metadata": {"name": "python-template"},
        "spec": {"podTemplate": {"spec": {"containers": [{
            "name": "python-runtime", "image": "python-runtime-sandbox",
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}]}}}})
    objects.create_namespaced_custom_object(*EXT, NS, "sandboxwarmpools", {
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
        "metadata": {"name": "python-pool"},
        "spec": {"replicas": 1, "sandboxTemplateRef": {"name": "python-template"}}})
    yield api
    core.delete_namespace(NS)
    api.close()


def _put(sb: object, value: str) -> None:
    sb.files.write("v", value.encode())  # type: ignore[attr-defined]
    result = sb.commands.run(f"sh -c 'echo {value} > /dev/shm/v'")  # type: ignore[attr-defined]
    assert result.exit_code == 0, result.stderr


def _held(sb: object) -> tuple[bytes, str]:
    memory = sb.commands.run("cat /dev/shm/v").stdout.strip()  # type: ignore[attr-defined]
    return sb.files.read("v"), memory  # type: ignore[attr-defined]


def test_snapshot_suspend_resume_restore_and_delete_with_the_official_client(
        control_plane: ControlPlaneProcess, api: kclient.ApiClient) -> None:
    conn = SandboxDirectConnectionConfig(api_url=control_plane.router_url, extra_headers=control_plane.router_headers)
    with PodSnapshotSandboxClient(connection_config=conn, api_client=api) as client:
        sb = client.create_sandbox("python-pool", namespace=NS, sandbox_ready_timeout=90)
        try:
            assert sb.snapshots is not None
            _put(sb, "one")
            first = sb.snapshots.create("first")
            assert first.success, first.error_reason
            _put(sb, "two")
            second = sb.snapshots.create("second")
            assert second.success, second.error_reason
            listed = sb.snapshots.list()
            assert listed.success, listed.error_reason
            assert [s.snapshot_uid for s in listed.snapshots] == [second.snapshot_uid, first.snapshot_uid]
            assert {s.source_pod for s in listed.snapshots} == {sb.get_pod_name()}

            # Suspend (no new snapshot) and resume: from the newest, "two".
            _put(sb, "three")
            suspended = sb.suspend(snapshot_before_suspend=False)
            assert suspended.success, suspended.error_reason
            assert sb.is_suspended()
            resumed = sb.resume()
            assert resumed.success and resumed.restored_from_snapshot, resumed.error_reason
            assert resumed.snapshot_uid == second.snapshot_uid
            assert _held(sb) == (b"two", "two")

            # Back to the first one, by name.
            assert sb.suspend(snapshot_before_suspend=False).success
            restored = sb.restore(first.snapshot_uid)
            assert restored.success and restored.restored_from_snapshot, restored.error_reason
            assert _held(sb) == (b"one", "one")

            # The default suspend takes a snapshot first; the resume starts from it.
            suspended = sb.suspend()
            assert suspended.success and suspended.snapshot_response is not None, suspended.error_reason
            latest = suspended.snapshot_response.snapshot_uid
            resumed = sb.resume()
            assert resumed.success and resumed.snapshot_uid == latest, resumed.error_reason
            assert _held(sb) == (b"one", "one")

            deleted = sb.snapshots.delete(first.snapshot_uid, timeout=30)
            assert deleted.success and deleted.deleted_snapshots == [first.snapshot_uid], deleted.error_reason
            gone = sb.snapshots.delete_all(timeout=30)
            assert gone.success and sorted(gone.deleted_snapshots) == sorted([second.snapshot_uid, latest])
            assert sb.snapshots.list().snapshots == []
        finally:
            sb.terminate()
