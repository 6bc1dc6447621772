"""The kind registry built from the packaged upstream CRDs, and API errors as Kubernetes Status objects."""

from __future__ import annotations

from decimal import Decimal

import pytest

from turbok.api import quantity, status
from turbok.api.kinds import NAMESPACE, default_registry

KINDS = default_registry()


def test_the_agent_sandbox_kinds_are_served_at_their_storage_version() -> None:
    served = {(k.api_version, k.kind): k for k in KINDS}
    for api_version, kind in [("agents.x-k8s.io/v1beta1", "Sandbox"),
                              ("extensions.agents.x-k8s.io/v1beta1", "SandboxTemplate"),
                              ("extensions.agents.x-k8s.io/v1beta1", "SandboxClaim"),
                              ("extensions.agents.x-k8s.io/v1beta1", "SandboxWarmPool"),
                              ("v1", "Namespace")]:
        assert (api_version, kind) in served
    # Upstream's kinds are served at v1beta1 only (their v1alpha1 is not served); turbok's own
    # SandboxSnapshot (agents.turbok.dev) is alpha by design.
    upstream = [k for k in KINDS if k.group.endswith("agents.x-k8s.io")]
    assert upstream and not any(k.version == "v1alpha1" for k in upstream)


def test_subresources_and_printer_columns_come_from_the_crds() -> None:
    pool = KINDS.by_kind("extensions.agents.x-k8s.io/v1beta1", "SandboxWarmPool")
    assert pool.namespaced and pool.status_subresource
    assert pool.scale is not None and pool.scale.spec_replicas_path == ".spec.replicas"
    assert pool.scale.label_selector_path == ".status.selector"
    sandbox = KINDS.by_kind("agents.x-k8s.io/v1beta1", "Sandbox")
    assert sandbox.scale is None
    assert [c["name"] for c in sandbox.printer_columns] == ["Ready", "Reason", "Age"]
    assert pool.crd is not None and pool.crd["metadata"]["name"] == "sandboxwarmpools.extensions.agents.x-k8s.io"


@pytest.mark.parametrize("typed", ["sandboxwarmpools", "sandboxwarmpool", "SandboxWarmPool", "swp",
                                   "sandboxwarmpools.extensions.agents.x-k8s.io"])
def test_resolve_what_users_type(typed: str) -> None:
    assert KINDS.resolve(typed).kind == "SandboxWarmPool"


def test_resolve_and_lookups_fail_with_kubernetes_messages() -> None:
    assert KINDS.resolve("ns") is NAMESPACE
    with pytest.raises(status.NotFound, match='doesn\'t have a resource type "deployments"'):
        KINDS.resolve("deployments")
    with pytest.raises(status.NotFound, match='no matches for kind "Sandbox" in version "agents.x-k8s.io/v1alpha1"'):
        KINDS.by_kind("agents.x-k8s.io/v1alpha1", "Sandbox")
    with pytest.raises(status.NotFound):
        KINDS.by_resource("agents.x-k8s.io", "v1beta1", "pods")
    assert KINDS.by_key("agents.x-k8s.io/sandboxes") is KINDS.resolve("sandbox")
    assert KINDS.by_key("nope/nopes") is None


def test_paths_and_names() -> None:
    sandbox = KINDS.resolve("sandbox")
    assert sandbox.base_path("ns1") == "/apis/agents.x-k8s.io/v1beta1/namespaces/ns1/sandboxes"
    assert sandbox.base_path() == "/apis/agents.x-k8s.io/v1beta1/sandboxes"
    assert NAMESPACE.base_path("ignored") == "/api/v1/namespaces"
    assert (sandbox.qualified, NAMESPACE.qualified) == ("sandboxes.agents.x-k8s.io", "namespaces")


@pytest.mark.parametrize(("error", "code", "reason"), [
    (status.BadRequest, 400, "BadRequest"), (status.Unauthorized, 401, "Unauthorized"),
    (status.Forbidden, 403, "Forbidden"), (status.NotFound, 404, "NotFound"),
    (status.MethodNotAllowed, 405, "MethodNotAllowed"), (status.AlreadyExists, 409, "AlreadyExists"),
    (status.Conflict, 409, "Conflict"), (status.Gone, 410, "Expired"),
    (status.UnsupportedMediaType, 415, "UnsupportedMediaType"), (status.Invalid, 422, "Invalid"),
    (status.ApiError, 500, "InternalError"),
])
def test_each_error_is_a_status_with_its_code_and_reason(error: type[status.ApiError], code: int,
                                                         reason: str) -> None:
    body = error("went wrong", kind="sandboxes", group="agents.x-k8s.io", name="s").to_status()
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "went wrong", "reason": reason, "code": code,
                    "details": {"name": "s", "group": "agents.x-k8s.io", "kind": "sandboxes"}}


def test_invalid_names_every_field_like_kube_apiserver() -> None:
    causes = [status.Cause("spec.replicas", 'Invalid value: "x": must be an integer'),
              status.Cause("spec.ref", "Required value", "FieldValueRequired")]
    err = status.Invalid.of(kind="SandboxWarmPool", group="extensions.agents.x-k8s.io", name="p", causes=causes)
    assert err.message == ('SandboxWarmPool.extensions.agents.x-k8s.io "p" is invalid: '
                           'spec.replicas: Invalid value: "x": must be an integer, spec.ref: Required value')
    details = err.to_status()["details"]
    assert details["causes"] == [
        {"reason": "FieldValueInvalid", "message": 'Invalid value: "x": must be an integer', "field": "spec.replicas"},
        {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.ref"},
    ]
    assert status.ApiError("busy", retry_after=3).to_status()["details"] == {"retryAfterSeconds": 3}
    assert status.status_success(name="n", kind="k", uid="u")["status"] == "Success"


@pytest.mark.parametrize(("text", "value"), [
    ("250m", Decimal("0.25")), ("1.5", Decimal("1.5")), ("512Mi", Decimal(512 * 2**20)), ("1G", Decimal(10**9)),
    ("1e3", Decimal(1000)), ("2Ki", Decimal(2048)), (3, Decimal(3)),
])
def test_quantities(text: str | int, value: Decimal) -> None:
    assert quantity.parse_quantity(text) == value


def test_quantity_helpers_round_up_and_refuse_garbage() -> None:
    assert quantity.cpu_millis("1.0001") == 1001
    assert quantity.to_bytes("1.5Ki") == 1536
    with pytest.raises(quantity.QuantityError):
        quantity.parse_quantity("lots")
