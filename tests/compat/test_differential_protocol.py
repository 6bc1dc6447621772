"""Differential tests of the protocol: the same requests to turbok's embedded API and to kube-apiserver 1.37.

Where tests/compat/test_differential.py compares what two servers make of objects, this module
compares how they answer the verbs around them: paging with continue tokens, label and field
selectors, dry-run, field validation (Strict, Warn, Ignore), server-side apply with and without
conflicts, the patch types, optimistic concurrency, delete preconditions, watches from a
resourceVersion, bookmarks, 410 for a resourceVersion too old, and kubectl's apply, replace, patch and
delete. Each scenario writes a transcript of what matters (status codes, ``Status`` reasons and field
causes, event types, the data that came back); the two transcripts must be equal. Differences that
remain on purpose are listed in docs/api.md ("Differences from kube-apiserver").
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.compat.test_differential import TurbokApi
from tests.conftest import ControlPlaneProcess
from tests.kube_cluster import RELEASE, binary, kube_cluster, missing

pytestmark = [pytest.mark.compat, pytest.mark.skipif(missing(version=RELEASE) is not None,
                                                  reason=str(missing(version=RELEASE)))]

CM = "/api/v1/namespaces/{ns}/configmaps"
Transcript = list[Any]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with kube_cluster(controller_manager=False, scheduler=False, kwok=False, version=RELEASE) as kube, TurbokApi(tmp_path_factory.mktemp("protocol")) as turbok:
        yield {"kube": kube, "turbok": turbok}


_n = 0


def _both(servers: dict[str, Any], scenario: Callable[[httpx.Client, str], Transcript]) -> None:
    global _n
    _n += 1
    out = {}
    for name, client in (("kube", servers["kube"].client), ("turbok", servers["turbok"])):
        ns = f"proto-{_n}"
        assert client.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code == 201
        out[name] = scenario(client, ns)
    assert out["turbok"] == out["kube"], f"\nturbok:          {out['turbok']}\nkube-apiserver:  {out['kube']}"


def _status(r: httpx.Response) -> list[Any]:
    body = r.json() if r.content else {}
    if r.status_code < 300 or body.get("kind") != "Status":
        return [r.status_code]
    causes = sorted(c.get("field", "") for c in (body.get("details") or {}).get("causes") or [])
    return [r.status_code, body.get("reason"), causes]


def _cm(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, **({"labels": labels} if labels else {})}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": md, "data": data}


def test_paging_with_continue_tokens(servers: dict[str, Any]) -> None:
    def scenario(c: httpx.Client, ns: str) -> Transcript:
        for i in range(5):
            c.post(CM.format(ns=ns), json=_cm(f"p{i}", {"set": "paged"}))
        out: Transcript = []
        params: dict[str, Any] = {"limit": 2, "labelSelector": "set=paged"}
        while True:
            page = c.get(CM.format(ns=ns), params=params).json()
            md = page["metadata"]
            out.append([[i["metadata"]["name"] for i in page["items"]], bool(md.get("continue")),
                        md.get("remainingItemCount")])
            if not md.get("continue"):
                break
            params["continue"] = md["continue"]
        out.append(_status(c.get(CM.format(ns=ns), params={"limit": 2, "continue": "not-a-token"})))
        return out

    _both(servers, scenario)


def test_label_and_field_selectors(servers: dict[str, Any]) -> None:
    def scenario(c: httpx.Client, ns: str) -> Transcript:
        for name, app in (("a", "x"), ("b", "y"), ("c", "")):
            c.post(CM.format(ns=ns), json=_cm(name, {"app": app} if app else {}))
        out: Transcript = []
        for selector in ("app=x", "app in (x,y)", "!app", "app!=x", "app", "app notin (x)"):
            r = c.get(CM.format(ns=ns), params={"labelSelector": selector})
            out.append([selector, sorted(i["metadata"]["name"] for i in r.json()["items"])])
        for selector in ("metadata.name=b", "metadata.name!=b"):
            r = c.get(CM.format(ns=ns), params={"fieldSelector": selector})
            out.append([selector, sorted(i["metadata"]["name"] for i in r.json()["items"]
                                         if i["metadata"]["name"] != "kube-root-ca.crt")])
        out.append(_status(c.get(CM.format(ns=ns), params={"labelSelector": "app=(x"})))
        out.append(_status(c.get(CM.format(ns=ns), params={"fieldSelector": "data.k=v"})))
        return out

    _both(servers, scenario)


def test_dry_run_and_field_validation(servers: dict[str, Any]) -> None:
    def scenario(c: httpx.Client, ns: str) -> Transcript:
        out: Transcript = []
        r = c.post(CM.format(ns=ns), params={"dryRun": "All"}, json=_cm("dry", k="v"))
        out += [_status(r), r.json()["data"], c.get(f"{CM.format(ns=ns)}/dry").status_code]
        out.append(_status(c.post(CM.format(ns=ns), params={"dryRun": "Maybe"}, json=_cm("dry"))))
        unknown = {**_cm("fv"), "bogus": 1}
        for mode in ("Strict", "Warn", "Ignore"):
            r = c.post(CM.format(ns=ns), params={"fieldValidation": mode, "dryRun": "All"}, json=unknown)
            warning = r.headers.get("Warning", "")
            out.append([mode, _status(r), "unknown field" in warning, '"bogus"' in (r.text if r.status_code >= 400
                                                                                    else warning)])
        return out

    _both(servers, scenario)


def test_server_side_apply_and_its_conflicts(servers: dict[str, Any]) -> None:
    """kube-apiserver's field ownership, and turbok's documented refusal (docs/api.md: no server-side apply)."""
    def apply(c: httpx.Client, ns: str, manager: str, data: dict[str, str], force: bool = False) -> httpx.Response:
        params = {"fieldManager": manager, **({"force": "true"} if force else {})}
        return c.patch(f"{CM.format(ns=ns)}/ssa", params=params, content=json.dumps(_cm("ssa", **data)),
                       headers={"Content-Type": "application/apply-patch+yaml"})

    kube = servers["kube"].client
    kube.post("/api/v1/namespaces", json={"metadata": {"name": "ssa"}})
    r = apply(kube, "ssa", "alice", {"a": "1", "shared": "alice"})
    assert r.status_code == 201 and r.json()["data"] == {"a": "1", "shared": "alice"}
    conflict = apply(kube, "ssa", "bob", {"shared": "bob"})
    assert _status(conflict) == [409, "Conflict", [".data.shared"]]
    r = apply(kube, "ssa", "bob", {"shared": "bob"}, force=True)
    assert r.status_code == 200 and r.json()["data"] == {"a": "1", "shared": "bob"}
    r = apply(kube, "ssa", "alice", {"a": "1"})  # alice gives "shared" up: bob owns it now, so it stays
    assert r.json()["data"] == {"a": "1", "shared": "bob"}

    turbok = servers["turbok"]
    turbok.post("/api/v1/namespaces", json={"metadata": {"name": "ssa"}})
    refused = apply(turbok, "ssa", "alice", {"a": "1"})
    assert _status(refused) == [415, "UnsupportedMediaType", []]
    assert "server-side apply is not supported" in refused.json()["message"]
    assert turbok.get(f"{CM.format(ns='ssa')}/ssa").status_code == 404, "nothing written"


def test_patch_types_concurrency_and_preconditions(servers: dict[str, Any]) -> None:
    def scenario(c: httpx.Client, ns: str) -> Transcript:
        out: Transcript = []
        base = c.post(CM.format(ns=ns), json=_cm("p", a="1", b="2")).json()
        path = f"{CM.format(ns=ns)}/p"
        for media, body in (("application/merge-patch+json", {"data": {"a": None, "c": "3"}}),
                            ("application/strategic-merge-patch+json", {"data": {"d": "4"}}),
                            ("application/json-patch+json", [{"op": "replace", "path": "/data/b", "value": "20"}]),
                            ("application/json-patch+json", [{"op": "test", "path": "/data/b", "value": "no"}]),
                            ("application/json-patch+json", [{"op": "remove", "path": "/data/missing"}]),
                            ("text/plain", {"data": {}})):
            r = c.patch(path, content=json.dumps(body), headers={"Content-Type": media})
            # (turbok names the failing JSON pointer as a field cause; kube-apiserver gives none: docs/api.md)
            out.append([media, _status(r)[:2], r.json().get("data") if r.status_code < 300 else None])
        stale = {**base, "data": {"x": "1"}}
        out.append(_status(c.put(path, json=stale)))
        out.append(_status(c.request("DELETE", path, json={"kind": "DeleteOptions", "apiVersion": "v1",
                                                           "preconditions": {"uid": "not-its-uid"}})))
        out.append(_status(c.request("DELETE", path, json={"kind": "DeleteOptions", "apiVersion": "v1",
                                                           "preconditions": {"uid": base["metadata"]["uid"]}})))
        out.append(_status(c.delete(path)))
        return out

    _both(servers, scenario)


def _watch(c: httpx.Client, ns: str, rv: str, *, bookmarks: bool = False, seconds: int = 1) -> Transcript:
    params = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": seconds,
              **({"allowWatchBookmarks": "true"} if bookmarks else {})}
    out: Transcript = []
    with c.stream("GET", CM.format(ns=ns), params=params, timeout=seconds + 10) as r:
        out.append(r.status_code)
        for line in r.iter_lines():
            if not line.strip():
                continue
            event = json.loads(line)
            obj = event["object"]
            if event["type"] == "ERROR":
                out.append(["ERROR", obj.get("code"), obj.get("reason")])
            elif event["type"] != "BOOKMARK":
                out.append([event["type"], obj["metadata"]["name"], obj.get("data")])
    return out


def test_watch_from_a_resource_version_and_410_when_it_is_too_old(servers: dict[str, Any]) -> None:
    def scenario(c: httpx.Client, ns: str) -> Transcript:
        first = c.post(CM.format(ns=ns), json=_cm("w", v="0")).json()
        rv = first["metadata"]["resourceVersion"]
        for i in (1, 2):
            c.patch(f"{CM.format(ns=ns)}/w", content=json.dumps({"data": {"v": str(i)}}),
                    headers={"Content-Type": "application/merge-patch+json"})
        c.delete(f"{CM.format(ns=ns)}/w")
        return [_watch(c, ns, rv, bookmarks=True), _watch(c, ns, "1")]

    _both(servers, scenario)


@pytest.mark.skipif(binary("kubectl") is None, reason="kubectl 1.37 is not in the Kubernetes binaries")
def test_kubectl_apply_patch_replace_delete(servers: dict[str, Any], control_plane: ControlPlaneProcess,
                                            tmp_path: Path) -> None:
    """kubectl 1.37 against both (turbok's whole control plane here: kubectl sends no token over plain HTTP)."""
    kubectl = str(binary("kubectl"))
    configs = {"kube": servers["kube"].kubeconfig, "turbok": control_plane.kubeconfig}
    manifest = tmp_path / "cm.yaml"

    def run(which: str, ns: str, *args: str) -> list[Any]:
        r = subprocess.run([kubectl, "--kubeconfig", str(configs[which]), "-n", ns, *args], capture_output=True,
                           text=True, timeout=60, env={"HOME": str(tmp_path / which), "PATH": "/usr/bin:/bin"})
        return [r.returncode, r.stdout.strip().replace(ns, "NS"), r.stderr.strip().split("\n")[0][:160]]

    out: dict[str, Transcript] = {}
    for which in ("kube", "turbok"):
        ns = f"kubectl-{which}-{_n}"
        t: Transcript = [run(which, ns, "create", "namespace", ns)[0]]
        manifest.write_text(yaml.safe_dump(_cm("k", {"app": "a"}, one="1")))
        t.append(run(which, ns, "apply", "-f", str(manifest)))
        manifest.write_text(yaml.safe_dump(_cm("k", {"app": "a"}, two="2")))
        t.append(run(which, ns, "apply", "-f", str(manifest)))
        t.append(run(which, ns, "get", "cm", "k", "-o", "jsonpath={.data}"))
        t.append(run(which, ns, "patch", "cm", "k", "-p", '{"data":{"three":"3"}}'))
        t.append(run(which, ns, "patch", "cm", "k", "--type", "json", "-p", '[{"op":"remove","path":"/data/two"}]'))
        t.append(run(which, ns, "patch", "cm", "k", "--type", "json", "-p", '[{"op":"remove","path":"/data/nope"}]')[0])
        manifest.write_text(yaml.safe_dump(_cm("k", None, four="4")))
        t.append(run(which, ns, "replace", "-f", str(manifest)))
        t.append(run(which, ns, "get", "cm", "k", "-o", "jsonpath={.data}"))
        t.append(run(which, ns, "create", "-f", str(manifest))[0])
        t.append(run(which, ns, "delete", "cm", "k"))
        t.append(run(which, ns, "delete", "cm", "k"))
        out[which] = t
    assert out["turbok"] == out["kube"], f"\nturbok:          {out['turbok']}\nkube-apiserver:  {out['kube']}"
