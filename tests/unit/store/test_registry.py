

def test_a_status_write_is_checked_against_the_status_schema_only_and_keeps_the_rest() -> None:
    import pytest

    from turbok.api.kinds import default_registry
    from turbok.api.status import Invalid
    from turbok.store.registry import ObjectRegistry
    from turbok.store.sqlite import SqliteStore

    reg = ObjectRegistry(SqliteStore(":memory:"), default_registry())
    reg.ensure_namespace("default")
    pool = reg.kinds.resolve("sandboxwarmpool")
    obj = reg.create(pool, {"metadata": {"name": "p"}, "spec": {"sandboxTemplateRef": {"name": "t"}}},
                     namespace="default")
    obj["status"] = {"replicas": 2, "readyReplicas": 1, "bogus": True}
    stored = reg.update(pool, obj, namespace="default", subresource="status")
    assert stored["status"] == {"replicas": 2, "readyReplicas": 1}, "unknown status fields are pruned"
    assert stored["spec"] == {"sandboxTemplateRef": {"name": "t"}, "replicas": 1}
    stored["status"] = {"replicas": "two"}
    with pytest.raises(Invalid) as e:
        reg.update(pool, stored, namespace="default", subresource="status")
    assert e.value.causes[0].field == "status.replicas"
    assert reg.get(pool, "default", "p")["status"]["replicas"] == 2, "nothing stored"
