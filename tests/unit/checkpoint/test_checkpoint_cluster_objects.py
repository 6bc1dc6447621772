"""What the operator asks of a cluster (pure), peer discovery from Pods, and the event log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from turbok.checkpoint.discovery import peers_from_pods
from turbok.checkpoint.events import EventLog
from turbok.checkpoint.manifest import PartKey
from turbok.checkpoint.operator import desired_objects

DATA = Path(__file__).parents[2] / "data" / "checkpoint"


def _config(**spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load((DATA / "checkpointconfiguration.yaml").read_text())
    doc["metadata"]["uid"] = "0000-1111"
    doc["spec"].update(spec)
    return doc


def test_a_configuration_becomes_rbac_and_a_daemonset_owned_by_it() -> None:
    objs = {o["kind"]: o for o in desired_objects(_config(tokenSecretRef={"name": "ckpt-token"}), namespace="ns", image="img:1")}
    assert set(objs) == {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "DaemonSet"}
    ds = objs["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "a3-highgpu-8g"}
    assert pod["tolerations"] == [{"key": "checkpoint", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    agent = pod["containers"][0]
    assert agent["image"] == "img:1" and "--discover" in agent["args"] and "--from-cluster" in agent["args"]
    # turbok's own image (scripts/build_image.py) runs as user 65532 unless told otherwise
    assert agent["command"] == ["turbok"] and agent["args"][:2] == ["checkpoint", "agent"]
    assert agent["securityContext"]["runAsUser"] == 0, "the agent must write the hostPath tiers (root's)"
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e for e in agent["env"]}
    assert env["TURBOK_CHECKPOINT_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "ckpt-token", "key": "token"}
    assert "--token" not in " ".join(agent["args"]), "a secret never travels as a flag"
    for kind in ("ServiceAccount", "ClusterRole", "Role", "DaemonSet"):
        assert objs[kind]["metadata"]["ownerReferences"][0]["uid"] == "0000-1111", kind
    cluster_rule = objs["ClusterRole"]["rules"][0]
    assert cluster_rule["resourceNames"] == ["training"] and "list" not in cluster_rule["verbs"]
    assert set(objs["Role"]["rules"][0]["verbs"]) == {"get", "list", "watch", "patch"}


def test_the_default_image_is_turboks_own() -> None:
    from turbok import __version__
    from turbok.checkpoint.operator import DEFAULT_IMAGE

    assert f"turbok:{__version__}" == DEFAULT_IMAGE  # the chart's image.repository, built by scripts/build_image.py


def test_spec_image_port_and_network_win() -> None:
    ds = {o["kind"]: o for o in desired_objects(_config(image="mine:2", port=9000, hostNetwork=False),
                                                namespace="ns", image="default")}["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    agent = pod["containers"][0]
    assert agent["image"] == "mine:2" and agent["ports"][0]["containerPort"] == 9000
    assert pod["hostNetwork"] is False and "dnsPolicy" not in pod
    assert "0.0.0.0:9000" in agent["args"]


def test_peers_are_running_pods_with_an_ip_at_their_checkpoint_port() -> None:
    def pod(ip: str | None, phase: str = "Running", deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": f"p-{ip}"}
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return {"metadata": meta, "status": {"phase": phase, "podIP": ip},
                "spec": {"containers": [{"ports": [{"name": "checkpoint", "containerPort": 7481}]}]}}

    pods = [pod("10.0.0.2"), pod("10.0.0.1"), pod(None), pod("10.0.0.3", "Pending"), pod("10.0.0.4", deleting=True), pod("fd00::1")]
    assert peers_from_pods(pods, 7480) == ["10.0.0.1:7481", "10.0.0.2:7481", "[fd00::1]:7481"]


def test_events_are_kept_across_restarts_and_found_by_part(tmp_path: Path) -> None:
    log = EventLog(tmp_path / ".events.jsonl")
    key = PartKey("j", 5, 1)
    log.record("Lost", "step 5 was lost", key)
    log.record("Repaired", "fine now", PartKey("j", 6, 1), warning=False)
    again = EventLog(tmp_path / ".events.jsonl")
    found = again.about(key, ("Lost",))
    assert found is not None and found["message"] == "step 5 was lost" and found["type"] == "Warning"
    assert [e["reason"] for e in again.list("j")] == ["Lost", "Repaired"]
    assert again.list("other") == []
    assert all(json.loads(line) for line in (tmp_path / ".events.jsonl").read_text().splitlines())
