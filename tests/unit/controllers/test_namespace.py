"""Every active namespace has its default ServiceAccount and the API server's CA bundle, kept there."""

from __future__ import annotations

from turbok.api.kinds import CONFIG_MAP, NAMESPACE, SERVICE_ACCOUNT

from .conftest import ROOT_CA, Cluster


async def test_each_namespace_gets_a_default_service_account_and_the_root_ca(cluster: Cluster) -> None:
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    for ns in ("default", "team"):
        await cluster.wait(lambda ns=ns: cluster.get(SERVICE_ACCOUNT, "default", ns), what=f"SA in {ns}")
        cm = await cluster.wait(lambda ns=ns: cluster.get(CONFIG_MAP, "kube-root-ca.crt", ns), what=f"CA in {ns}")
        assert cm["data"] == {"ca.crt": ROOT_CA}
        assert cm["metadata"]["annotations"]["kubernetes.io/description"].startswith("Contains a CA bundle")


async def test_deleted_or_changed_they_come_back(cluster: Cluster) -> None:
    await cluster.wait(lambda: cluster.get(CONFIG_MAP, "kube-root-ca.crt"), what="the CA ConfigMap")
    cluster.registry.delete(SERVICE_ACCOUNT, "default", "default")
    await cluster.wait(lambda: cluster.get(SERVICE_ACCOUNT, "default"), what="the SA made again")
    cluster.patch(CONFIG_MAP, "kube-root-ca.crt", {"data": {"ca.crt": "forged"}})
    await cluster.wait(lambda: cluster.get(CONFIG_MAP, "kube-root-ca.crt")["data"] == {"ca.crt": ROOT_CA},
                       what="the bundle put back")


async def test_a_terminating_namespace_is_emptied_not_refilled(cluster: Cluster) -> None:
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bye"}})
    await cluster.wait(lambda: cluster.get(SERVICE_ACCOUNT, "default", "bye"), what="SA in bye")
    cluster.registry.delete(NAMESPACE, None, "bye")
    await cluster.wait(lambda: cluster.get(NAMESPACE, "bye", "") is None, timeout=10, what="namespace gone")
    assert cluster.get(SERVICE_ACCOUNT, "default", "bye") is None
