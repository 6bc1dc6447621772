"""resource.k8s.io/v1 (Dynamic Resource Allocation) as kube-apiserver 1.37 defaults and checks it.

DeviceClass, ResourceClaim (spec and status), ResourceClaimTemplate and
ResourceSlice, plus a Pod's ``spec.resourceClaims`` and its containers'
``resources.claims`` (``pod_claim_causes``). Defaults: a request's
``allocationMode: ExactCount`` with ``count: 1``, a toleration's ``operator:
Equal``, a device taint's ``timeAdded``. Checks, worded as the real server
words them (tests/data/differential/dra.yaml): names (DNS labels and
subdomains, fully qualified attribute names), the bounds of 1.37 (32 requests
and selectors, 8 subrequests, 128 devices per slice or 64 with taints or
counters, 32 attributes and capacities per device, 256 consumers), exactly one
of each one-of (``exactly``/``firstAvailable``, the slice's node selection, an
attribute's value), references (constraints and configs name requests that
exist, counters name counter sets), CEL selectors that compile
(``turbok.api.cel``: a 422 with the compiler's message), immutable specs and
allocations. What 1.37 keeps behind disabled feature gates (partition type
attributes, derived attributes, list-valued attributes) is dropped on write,
as there. Pure functions; ``turbok.store.strategy`` wires them to the kinds.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from typing import Any

from turbok.api import cel
from turbok.api import validation as v
from turbok.api.meta import qualified_name_problems
from turbok.api.status import Cause

__all__ = [
    "ADMIN_ACCESS_LABEL",
    "admin_access_causes",
    "cel_causes",
    "copy_claim_spec",
    "pod_claim_causes",
    "prepare_claim",
    "prepare_slice",
    "set_claim_defaults",
    "set_template_defaults",
    "validate_claim",
    "validate_claim_status_update",
    "validate_claim_update",
    "validate_device_class",
    "validate_device_class_update",
    "validate_slice",
    "validate_slice_update",
    "validate_template",
    "validate_template_update",
]

Obj = dict[str, Any]

#: A namespace must carry this label for claims in it to ask for admin access.
ADMIN_ACCESS_LABEL = "resource.kubernetes.io/admin-access"
MAX_REQUESTS = 32
MAX_SUBREQUESTS = 8
MAX_SELECTORS = 32
MAX_CONSTRAINTS = 32
MAX_CONFIGS = 32
MAX_DEVICES = 128
MAX_DEVICES_WITH_TAINTS_OR_COUNTERS = 64
MAX_ATTRIBUTES_AND_CAPACITIES = 32
MAX_RESERVED_FOR = 256
MAX_COUNTER_SETS = 8
MAX_COUNTERS = 32
MAX_TAINTS = 16
MAX_TOLERATIONS = 16
MAX_STRING_ATTRIBUTE = 64
MAX_RAW_PARAMETERS = 10 * 1024
ALLOCATION_MODES = ("All", "ExactCount")
TAINT_EFFECTS = ("NoExecute", "NoSchedule", "None")
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _d(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# ---------------------------------------------------------------- defaults

def _default_request(req: Obj) -> None:
    if not req.get("allocationMode"):
        req["allocationMode"] = "ExactCount"
    if req["allocationMode"] == "ExactCount" and not req.get("count"):
        req["count"] = 1  # 0 is Go's "unset"
    for t in _l(req.get("tolerations")):
        if isinstance(t, dict) and not t.get("operator"):
            t["operator"] = "Equal"
    req.pop("derivedAttributes", None)  # DRADerivedAttributes: alpha, off in 1.37


def _default_claim_spec(spec: Any) -> None:
    if isinstance(spec, dict):
        devices = spec.setdefault("devices", {})
        if isinstance(devices, dict):
            devices.setdefault("requests", None)  # Go's DeviceClaim serializes an absent list as null
    for req in _l(_d(_d(spec).get("devices")).get("requests")):
        if not isinstance(req, dict):
            continue
        if isinstance(req.get("exactly"), dict):
            _default_request(req["exactly"])
        for sub in _l(req.get("firstAvailable")):
            if isinstance(sub, dict):
                _default_request(sub)


def set_claim_defaults(claim: Obj) -> None:
    _default_claim_spec(claim.get("spec"))


def prepare_claim(claim: Obj) -> None:
    """A new claim's status is empty (the scheduler allocates, the kubelet reports devices)."""
    claim["status"] = {}


def set_template_defaults(template: Obj) -> None:
    spec = template.get("spec")
    if isinstance(spec, dict):
        spec.setdefault("metadata", {})  # ResourceClaimTemplateSpec.ObjectMeta is not a pointer
        _default_claim_spec(spec.get("spec"))


def prepare_slice(obj: Obj, old: Obj | None = None) -> None:
    """``timeAdded`` of each device taint, kept from the old object when the taint is unchanged."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    spec = _d(obj.get("spec"))
    spec.pop("partitionTypeAttribute", None)  # alpha in 1.37: dropped
    old_devices = {d.get("name"): d for d in _l(_d(_d(old).get("spec")).get("devices")) if isinstance(d, dict)}
    for device in _l(spec.get("devices")):
        if not isinstance(device, dict):
            continue
        for attr in _d(device.get("attributes")).values():
            if isinstance(attr, dict):
                for key in ("ints", "strings", "versions", "bools"):  # DRAListTypeAttributes: alpha
                    attr.pop(key, None)
        before = {(t.get("key"), t.get("value"), t.get("effect")): t.get("timeAdded")
                  for t in _l(_d(old_devices.get(device.get("name"))).get("taints")) if isinstance(t, dict)}
        for taint in _l(device.get("taints")):
            if isinstance(taint, dict) and not taint.get("timeAdded"):
                taint["timeAdded"] = before.get((taint.get("key"), taint.get("value"), taint.get("effect"))) or now


# ---------------------------------------------------------------- shared pieces

def _label_name(path: str, value: Any) -> list[Cause]:
    if not isinstance(value, str) or not value:
        return [v.required(path)]
    return v.dns1123_label_causes(path, value)


def _subdomain(path: str, value: Any) -> list[Cause]:
    if not isinstance(value, str) or not value:
        return [v.required(path)]
    return v.dns1123_subdomain_causes(path, value)


def _driver(path: str, value: Any) -> list[Cause]:
    causes = _subdomain(path, value)
    if not causes and isinstance(value, str) and len(value) > 63:
        causes.append(v.invalid(path, value, "must be no more than 63 characters"))
    return causes


def _pool_name(path: str, value: Any) -> list[Cause]:
    if not isinstance(value, str) or not value:
        return [v.required(path)]
    causes = []
    if len(value) > 253:
        causes.append(v.too_long(path, 253))
    for part in value.split("/"):
        if v.dns1123_subdomain_causes(path, part):
            causes.append(v.invalid(path, value, "a valid pool name must consist of one or more DNS sub-domains "
                                                  "separated by slashes"))
            break
    return causes


def _qualified_attribute(path: str, value: Any) -> list[Cause]:
    """A fully qualified attribute name: ``<domain>/<C identifier>``."""
    if not isinstance(value, str) or not value:
        return [v.required(path)]
    domain, slash, ident = value.partition("/")
    if not slash:
        return [v.invalid(path, value, "a fully qualified name must be a domain and a name separated by a slash")]
    causes = []
    if not domain:
        causes.append(v.required(path, "the domain must not be empty"))
    else:
        causes += v.dns1123_subdomain_causes(path, domain)
    causes += _c_identifier(path, ident)
    return causes


def _c_identifier(path: str, ident: str) -> list[Cause]:
    if not ident:
        return [v.required(path, "the name must not be empty")]
    causes = []
    if len(ident) > 32:
        causes.append(v.too_long(path, 32))
    if not _C_IDENTIFIER.match(ident):
        causes.append(v.invalid(path, ident, "a valid C identifier must start with alphabetic character or '_', "
                                              "followed by a string of alphanumeric characters or '_' (e.g. "
                                              "'my_name',  or 'MY_NAME',  or 'MyName', regex used for validation "
                                              "is '[A-Za-z_][A-Za-z0-9_]*')"))
    return causes


def _attribute_name(path: str, name: str) -> list[Cause]:
    """An attribute or capacity name: an optional domain, then a C identifier."""
    domain, slash, ident = name.rpartition("/")
    causes = []
    if slash:
        if not domain:
            causes.append(v.required(path, "the domain must not be empty"))
        else:
            causes += v.dns1123_subdomain_causes(path, domain)
    return causes + _c_identifier(path, ident)


def _selectors(path: str, selectors: Any) -> list[Cause]:
    items = _l(selectors)
    causes: list[Cause] = []
    if len(items) > MAX_SELECTORS:
        return [Cause(path, f"Too many: {len(items)}: must have at most {MAX_SELECTORS} items", "FieldValueTooMany")]
    for i, sel in enumerate(items):
        where = f"{path}[{i}]"
        expr_obj = _d(sel).get("cel")
        if not isinstance(expr_obj, dict):
            causes.append(v.required(f"{where}.cel"))
            continue
        causes += cel_causes(f"{where}.cel.expression", expr_obj.get("expression"))
    return causes


def cel_causes(path: str, expression: Any) -> list[Cause]:
    """A selector expression that is empty, too long or does not compile (``compilation failed: ...``)."""
    if not isinstance(expression, str):
        return [v.required(path)]
    if len(expression.encode()) > cel.MAX_EXPRESSION_LENGTH:
        return [v.too_long(path, cel.MAX_EXPRESSION_LENGTH)]
    try:
        cel.compile_selector(expression)
    except cel.CelCompileError as e:
        return [v.invalid(path, expression, str(e) if e.not_bool else f"compilation failed: {e}")]
    return []


_CASELESS_SUBDOMAIN = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$")


def _opaque_config(path: str, config: Any, late: list[Cause]) -> list[Cause]:
    opaque = _d(config).get("opaque")
    if not isinstance(opaque, dict):
        return [v.required(f"{path}.opaque")]
    causes: list[Cause] = []
    driver = opaque.get("driver")
    if not driver:
        late.append(v.required(f"{path}.opaque.driver"))
    elif not _CASELESS_SUBDOMAIN.match(str(driver)) or len(str(driver)) > 63:
        late.append(v.invalid(f"{path}.opaque.driver", driver, "an RFC 1123 subdomain must consist of alphanumeric "
                              "characters, '-' or '.', and must start and end with an alphanumeric character (e.g. "
                              "'Example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]"
                              "([-a-z0-9]*[a-z0-9])?)*')" if _CASELESS_SUBDOMAIN.match(str(driver)) is None else
                              "must be no more than 63 characters"))
    params = opaque.get("parameters")
    if params is None:
        causes.append(v.required(f"{path}.opaque.parameters"))
    elif not isinstance(params, dict):
        causes.append(v.invalid(f"{path}.opaque.parameters", "<value omitted>", "parameters must be a valid JSON "
                                                                                 "object"))
    elif len(_go_json(params)) > MAX_RAW_PARAMETERS:
        causes.append(v.too_long(f"{path}.opaque.parameters", MAX_RAW_PARAMETERS))
    return causes


def _tolerations(path: str, tolerations: Any, late: list[Cause]) -> list[Cause]:
    items = _l(tolerations)
    if len(items) > MAX_TOLERATIONS:
        return [Cause(path, f"Too many: {len(items)}: must have at most {MAX_TOLERATIONS} items", "FieldValueTooMany")]
    causes: list[Cause] = []
    for i, t in enumerate(items):
        t = _d(t)
        where = f"{path}[{i}]"
        key, op, value = t.get("key") or "", t.get("operator") or "Equal", t.get("value") or ""
        if key:
            causes += [v.invalid(f"{where}.key", key, p) for p in qualified_name_problems(key)]
        if op == "Exists":
            if value:
                causes.append(v.invalid(f"{where}.value", value, "must be empty when `operator` is 'Exists'"))
        elif op == "Equal":
            if not key:
                causes.append(v.invalid(f"{where}.operator", op, "operator must be Exists when `key` is empty, "
                                                                 "which means \"match all values and all keys\""))
        else:
            late.append(v.not_supported(f"{where}.operator", op, ("Equal", "Exists")))
        effect = t.get("effect")
        if effect and effect not in ("NoExecute", "NoSchedule"):
            late.append(v.not_supported(f"{where}.effect", effect, ("NoExecute", "NoSchedule")))
    return causes


# ---------------------------------------------------------------- claims

_EXACT_ORDER = ("deviceClassName", "selectors", "allocationMode", "count", "adminAccess", "tolerations", "capacity")
_SUB_ORDER = ("name", "deviceClassName", "selectors", "allocationMode", "count", "tolerations", "capacity")


def _go_json(value: Any, order: tuple[str, ...] = ()) -> str:
    """A value as Go's encoding/json writes the typed object (struct fields in declaration order)."""
    import json

    if isinstance(value, dict) and order:
        value = {**{k: value[k] for k in order if k in value}, **{k: x for k, x in value.items() if k not in order}}
    return json.dumps(value, separators=(",", ":"))


def _request_json(req: Obj) -> str:
    out: dict[str, Any] = {k: req[k] for k in ("name",) if k in req}
    if isinstance(req.get("exactly"), dict):
        out["exactly"] = {k: req["exactly"][k] for k in _EXACT_ORDER if k in req["exactly"]}
    if isinstance(req.get("firstAvailable"), list):
        out["firstAvailable"] = [{k: _d(x)[k] for k in _SUB_ORDER if k in _d(x)} for x in req["firstAvailable"]]
    return _go_json(out)


def _request_fields(path: str, req: Obj, *, sub: bool, late: list[Cause]) -> list[Cause]:
    causes: list[Cause] = []
    if sub and not req.get("deviceClassName"):
        late.append(v.required(f"{path}.deviceClassName"))
    else:
        causes += _subdomain(f"{path}.deviceClassName", req.get("deviceClassName"))
    causes += _selectors(f"{path}.selectors", req.get("selectors"))
    mode = req.get("allocationMode") or "ExactCount"
    count = req.get("count")
    if mode == "ExactCount":
        if isinstance(count, int) and count <= 0:
            causes.append(v.invalid(f"{path}.count", count, "must be greater than zero"))
    elif mode == "All":
        if count is not None and count != 0:
            causes.append(v.invalid(f"{path}.count", count, "must not be specified when allocationMode is 'All'"))
    else:
        late.append(v.not_supported(f"{path}.allocationMode", mode, ALLOCATION_MODES))
    causes += _tolerations(f"{path}.tolerations", req.get("tolerations"), late)
    for name, value in _d(_d(req.get("capacity")).get("requests")).items():
        try:
            v.quantity(value)
        except ValueError:
            causes.append(v.invalid(f"{path}.capacity.requests[{name}]", value, "must be a valid quantity"))
    return causes


def _claim_spec(spec: Any, path: str) -> list[Cause]:
    """Handwritten checks first, then (``late``) what kube 1.37 checks declaratively, in its order."""
    devices = _d(_d(spec).get("devices"))
    causes: list[Cause] = []
    late: list[Cause] = []
    dups: list[Cause] = []
    requests = _l(devices.get("requests"))
    names: dict[str, set[str] | None] = {}  # request -> its subrequests (None: an exact request)
    rpath = f"{path}.devices.requests"
    if len(requests) > MAX_REQUESTS:
        causes.append(Cause(rpath, f"Too many: {len(requests)}: must have at most {MAX_REQUESTS} items",
                            "FieldValueTooMany"))
    for i, req in enumerate(requests):
        req = _d(req)
        where = f"{rpath}[{i}]"
        name = req.get("name")
        causes += _label_name(f"{where}.name", name)
        exactly, first = req.get("exactly"), req.get("firstAvailable") or None
        subs: set[str] | None = None
        if exactly is not None and first is not None:
            causes.append(v.invalid(where, None, "exactly one of `exactly` or `firstAvailable` is required, but "
                                                 "multiple fields are set"))
        elif exactly is None and first is None:
            causes.append(v.required(where, "exactly one of `exactly` or `firstAvailable` is required"))
        elif isinstance(exactly, dict):
            causes += _request_fields(f"{where}.exactly", exactly, sub=False, late=late)
        else:
            subs = set()
            items = _l(first)
            fpath = f"{where}.firstAvailable"
            if len(items) > MAX_SUBREQUESTS:
                causes.append(Cause(fpath, f"Too many: {len(items)}: must have at most {MAX_SUBREQUESTS} items",
                                    "FieldValueTooMany"))
            for j, sub in enumerate(items):
                sub = _d(sub)
                spath = f"{fpath}[{j}]"
                sname = sub.get("name")
                causes += _label_name(f"{spath}.name", sname)
                if isinstance(sname, str) and sname:
                    if sname in subs:
                        late.append(Cause(spath, f"Duplicate value: {_go_json(sub, _SUB_ORDER)}",
                                          "FieldValueDuplicate"))
                    subs.add(sname)
                causes += _request_fields(spath, sub, sub=True, late=late)
        if isinstance(name, str) and name:
            if name in names:
                dups.append(Cause(where, f"Duplicate value: {_request_json(req)}", "FieldValueDuplicate"))
            names[name] = subs
    constraints = _l(devices.get("constraints"))
    cpath = f"{path}.devices.constraints"
    if len(constraints) > MAX_CONSTRAINTS:
        causes.append(Cause(cpath, f"Too many: {len(constraints)}: must have at most {MAX_CONSTRAINTS} items",
                            "FieldValueTooMany"))
    for i, con in enumerate(constraints):
        con = _d(con)
        where = f"{cpath}[{i}]"
        causes += _references(f"{where}.requests", con.get("requests"), names)
        if con.get("matchAttribute") is None and con.get("distinctAttribute") is None:
            # (sic: kube 1.37's message for a constraint with neither)
            causes.append(v.required(where, 'exactly one of "matchAttribute" or "distinctAttribute" is required, '
                                            "but multiple fields are set"))
    for i, con in enumerate(constraints):
        con = _d(con)
        for key in ("matchAttribute", "distinctAttribute"):
            if con.get(key) is not None:
                causes += _qualified_attribute(f"{cpath}[{i}].{key}", con[key])
    configs = _l(devices.get("config"))
    gpath = f"{path}.devices.config"
    if len(configs) > MAX_CONFIGS:
        causes.append(Cause(gpath, f"Too many: {len(configs)}: must have at most {MAX_CONFIGS} items",
                            "FieldValueTooMany"))
    for i, conf in enumerate(configs):
        where = f"{gpath}[{i}]"
        causes += _references(f"{where}.requests", _d(conf).get("requests"), names)
        causes += _opaque_config(where, conf, late)
    return causes + dups + late


def _references(path: str, refs: Any, names: dict[str, set[str] | None]) -> list[Cause]:
    causes: list[Cause] = []
    seen: set[str] = set()
    for j, ref in enumerate(_l(refs)):
        where = f"{path}[{j}]"
        if not isinstance(ref, str) or not ref:
            causes.append(v.required(where))
            continue
        if ref in seen:
            causes.append(v.duplicate(where, ref))
        seen.add(ref)
        main, slash, sub = ref.partition("/")
        subs = names.get(main, set()) if main in names else None
        if main not in names or (slash and (subs is None or sub not in subs)):
            causes.append(v.invalid(where, ref, "must be the name of a request in the claim or the name of a "
                                                "request and a subrequest separated by '/'"))
    return causes


def validate_claim(claim: Obj) -> list[Cause]:
    return _claim_spec(claim.get("spec"), "spec")


def admin_access_causes(obj: Obj, namespace_labels: dict[str, str]) -> list[Cause]:
    """Requests for admin access in a claim or template whose namespace lacks ``ADMIN_ACCESS_LABEL``."""
    template = obj.get("kind") == "ResourceClaimTemplate"
    spec = _d(_d(obj.get("spec")).get("spec")) if template else _d(obj.get("spec"))
    if namespace_labels.get(ADMIN_ACCESS_LABEL) == "true":
        return []
    path = "spec.spec.devices.requests" if template else "spec.devices.requests"
    return [v.forbidden(f"{path}[{i}].adminAccess", "admin access to devices requires the "
                        f"`{ADMIN_ACCESS_LABEL}: true` label on the containing namespace")
            for i, req in enumerate(_l(_d(spec.get("devices")).get("requests")))
            if _d(_d(req).get("exactly")).get("adminAccess")]


def validate_claim_update(new: Obj, old: Obj) -> list[Cause]:
    if _d(new.get("spec")) != _d(old.get("spec")):
        return [v.invalid("spec", None, "field is immutable")]
    return []


def validate_claim_status_update(new: Obj, old: Obj) -> list[Cause]:
    """reservedFor (unique uids, at most 256, each fully named), an allocation set at most once and removed only
    when nothing is reserved, results naming requests of the claim."""
    status, old_status = _d(new.get("status")), _d(old.get("status"))
    causes: list[Cause] = []
    reserved = _l(status.get("reservedFor"))
    path = "status.reservedFor"
    if len(reserved) > MAX_RESERVED_FOR:
        causes.append(Cause(path, f"Too many: {len(reserved)}: must have at most {MAX_RESERVED_FOR} items",
                            "FieldValueTooMany"))
    uids: set[str] = set()
    for i, ref in enumerate(reserved):
        ref = _d(ref)
        where = f"{path}[{i}]"
        for key in ("resource", "name", "uid"):
            if not ref.get(key):
                causes.append(v.required(f"{where}.{key}"))
        uid = ref.get("uid")
        if isinstance(uid, str) and uid:
            if uid in uids:
                causes.append(v.duplicate(f"{where}.uid", uid))
            uids.add(uid)
    allocation, old_allocation = status.get("allocation"), old_status.get("allocation")
    if old_allocation is not None and allocation is not None and allocation != old_allocation:
        causes.append(v.invalid("status.allocation", "<value omitted>", "field is immutable"))
    if reserved and allocation is None:
        causes.append(v.forbidden(path, "may not be specified when `allocated` is not set"))
    if allocation is not None and allocation != old_allocation:
        names = {str(_d(r).get("name")): {str(_d(s).get("name")) for s in _l(_d(r).get("firstAvailable"))}
                 for r in _l(_d(_d(new.get("spec")).get("devices")).get("requests"))}
        for i, res in enumerate(_l(_d(_d(allocation).get("devices")).get("results"))):
            res = _d(res)
            where = f"status.allocation.devices.results[{i}]"
            request = str(res.get("request") or "")
            main, slash, sub = request.partition("/")
            if main not in names or (slash and sub not in names[main]):
                causes.append(v.invalid(f"{where}.request", request, "must be the name of a request in the claim "
                                                                     "or the name of a request and a subrequest "
                                                                     "separated by '/'"))
            causes += _driver(f"{where}.driver", res.get("driver"))
            causes += _pool_name(f"{where}.pool", res.get("pool"))
            causes += _label_name(f"{where}.device", res.get("device"))
    return causes


def validate_template(template: Obj) -> list[Cause]:
    return _claim_spec(_d(template.get("spec")).get("spec"), "spec.spec")


def validate_template_update(new: Obj, old: Obj) -> list[Cause]:
    if _d(new.get("spec")) != _d(old.get("spec")):
        return [v.invalid("spec", None, "field is immutable")]
    return []


# ---------------------------------------------------------------- classes

def validate_device_class(dc: Obj) -> list[Cause]:
    spec = _d(dc.get("spec"))
    causes = _selectors("spec.selectors", spec.get("selectors"))
    configs = _l(spec.get("config"))
    if len(configs) > MAX_CONFIGS:
        causes.append(Cause("spec.config", f"Too many: {len(configs)}: must have at most {MAX_CONFIGS} items",
                            "FieldValueTooMany"))
    late: list[Cause] = []
    for i, conf in enumerate(configs):
        causes += _opaque_config(f"spec.config[{i}]", conf, late)
    return causes + late


def validate_device_class_update(new: Obj, old: Obj) -> list[Cause]:
    return validate_device_class(new)


# ---------------------------------------------------------------- slices

def _node_selection(spec: Obj, path: str, *, device: bool) -> tuple[list[str], list[Cause]]:
    fields = ["nodeName", "nodeSelector", "allNodes"] + ([] if device else ["perDeviceNodeSelection"])
    set_ = [f for f in fields if spec.get(f) not in (None, False, "")]
    return set_, []


def validate_slice(rs: Obj) -> list[Cause]:
    spec = _d(rs.get("spec"))
    causes: list[Cause] = []
    causes += _driver("spec.driver", spec.get("driver"))
    pool = _d(spec.get("pool"))
    causes += _pool_name("spec.pool.name", pool.get("name"))
    count = pool.get("resourceSliceCount")
    if not isinstance(count, int) or count <= 0:
        causes.append(v.invalid("spec.pool.resourceSliceCount", count or 0, "must be greater than zero"))
    gen = pool.get("generation")
    if isinstance(gen, int) and gen < 0:
        causes.append(v.invalid("spec.pool.generation", gen, "must be greater than or equal to zero"))
    chosen, _ = _node_selection(spec, "spec", device=False)
    if not chosen:
        causes.append(v.required("spec", "exactly one of `nodeName`, `nodeSelector`, `allNodes`, "
                                         "`perDeviceNodeSelection` is required"))
    elif len(chosen) > 1:
        causes.append(v.invalid("spec", "{`" + "`, `".join(chosen) + "`}", "exactly one of `nodeName`, "
                                "`nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required, but multiple "
                                "fields are set"))
    if spec.get("nodeName"):
        causes += v.dns1123_subdomain_causes("spec.nodeName", str(spec["nodeName"]))
    terms = _l(_d(spec.get("nodeSelector")).get("nodeSelectorTerms"))
    if spec.get("nodeSelector") is not None and len(terms) != 1:
        causes.append(v.invalid("spec.nodeSelector.nodeSelectorTerms", "<value omitted>", "must have exactly one "
                                                                                         "node selector term"))
    devices = _l(spec.get("devices"))
    counter_sets = _l(spec.get("sharedCounters"))
    if devices and counter_sets:
        causes.append(v.invalid("spec", "{`devices`, `sharedCounters`}", "exactly one of `devices` or "
                                "`sharedCounters` is required, but multiple fields are set"))
    heavy = any(_l(_d(d).get("taints")) or _l(_d(d).get("consumesCounters")) for d in devices)
    limit = MAX_DEVICES_WITH_TAINTS_OR_COUNTERS if heavy else MAX_DEVICES
    if len(devices) > limit:
        causes.append(Cause("spec.devices", f"Too many: {len(devices)}: must have at most {limit} items",
                            "FieldValueTooMany"))
    names: set[str] = set()
    per_device = bool(spec.get("perDeviceNodeSelection"))
    dups: list[Cause] = []
    late: list[Cause] = []
    for i, device in enumerate(devices):
        device = _d(device)
        where = f"spec.devices[{i}]"
        name = device.get("name")
        causes += _label_name(f"{where}.name", name)
        if isinstance(name, str) and name:
            if name in names:
                dups.append(v.duplicate(where, name))
            names.add(name)
        causes += _device(where, device, str(spec.get("driver") or ""), per_device, late)
    if len(counter_sets) > MAX_COUNTER_SETS:
        causes.append(Cause("spec.sharedCounters", f"Too many: {len(counter_sets)}: must have at most "
                            f"{MAX_COUNTER_SETS} items", "FieldValueTooMany"))
    set_names: set[str] = set()
    for i, cs in enumerate(counter_sets):
        cs = _d(cs)
        where = f"spec.sharedCounters[{i}]"
        causes += _label_name(f"{where}.name", cs.get("name"))
        if isinstance(cs.get("name"), str):
            if cs["name"] in set_names:
                causes.append(v.duplicate(f"{where}.name", cs["name"]))
            set_names.add(cs["name"])
        causes += _counters(f"{where}.counters", cs.get("counters"), required=True)
    return causes + dups + late


def _counters(path: str, counters: Any, *, required: bool) -> list[Cause]:
    items = _d(counters)
    if required and not items:
        return [v.required(path)]
    causes: list[Cause] = []
    if len(items) > MAX_COUNTERS:
        causes.append(Cause(path, f"Too many: {len(items)}: must have at most {MAX_COUNTERS} items",
                            "FieldValueTooMany"))
    for key in items:
        causes += v.dns1123_label_causes(f"{path}[{key}]", key)
    return causes


_VALUE_FIELDS = "`int`, `bool`, `string`, `version`, `ints`, `bools`, `strings`, `versions`"


def _device(path: str, device: Obj, driver: str, per_device: bool, late: list[Cause]) -> list[Cause]:
    causes: list[Cause] = []
    attributes, capacity = _d(device.get("attributes")), _d(device.get("capacity"))
    if len(attributes) + len(capacity) > MAX_ATTRIBUTES_AND_CAPACITIES:
        causes.append(Cause(path, f"Too many: {len(attributes) + len(capacity)}: must have at most "
                            f"{MAX_ATTRIBUTES_AND_CAPACITIES} attributes and capacities", "FieldValueTooMany"))
    names: list[Cause] = []
    for name, value in attributes.items():
        where = f"{path}.attributes[{name}]"
        names += [Cause(f"{path}.attributes", c.message, c.reason) for c in _attribute_name(where, name)]
        value = _d(value)
        given = [k for k in ("int", "bool", "string", "version") if k in value]
        if not given:
            late.append(v.invalid(where, "", f"must specify one of: {_VALUE_FIELDS}"))
        elif len(given) > 1:
            late.append(v.invalid(where, "{" + ", ".join(given) + "}", f"must specify exactly one of: {_VALUE_FIELDS}"))
        elif given[0] == "string" and len(str(value["string"])) > MAX_STRING_ATTRIBUTE:
            causes.append(v.too_long(f"{where}.string", MAX_STRING_ATTRIBUTE))
        elif given[0] == "version":
            text = str(value["version"])
            if not _SEMVER.match(text):
                causes.append(v.invalid(f"{where}.version", text, "must be a string compatible with semver.org "
                                                                  "spec 2.0.0"))
            if len(text) > MAX_STRING_ATTRIBUTE:
                causes.append(v.too_long(f"{where}.version", MAX_STRING_ATTRIBUTE))
    causes += names
    multiple = bool(device.get("allowMultipleAllocations"))
    for name, value in capacity.items():
        where = f"{path}.capacity[{name}]"
        causes += _attribute_name(where, name)
        if _d(value).get("requestPolicy") is not None and not multiple:
            causes.append(v.forbidden(f"{where}.requestPolicy", "allowMultipleAllocations must be true"))
    taints = _l(device.get("taints"))
    if len(taints) > MAX_TAINTS:
        causes.append(Cause(f"{path}.taints", f"Too many: {len(taints)}: must have at most {MAX_TAINTS} items",
                            "FieldValueTooMany"))
    for i, taint in enumerate(taints):
        taint = _d(taint)
        where = f"{path}.taints[{i}]"
        key = str(taint.get("key") or "")
        causes += [v.invalid(f"{where}.key", key, p) for p in qualified_name_problems(key)]
        effect = taint.get("effect")
        if not effect:
            late.append(v.required(f"{where}.effect"))
        elif effect not in TAINT_EFFECTS:
            late.append(v.not_supported(f"{where}.effect", effect, TAINT_EFFECTS))
    seen_sets: set[str] = set()
    for i, use in enumerate(_l(device.get("consumesCounters"))):
        use = _d(use)
        where = f"{path}.consumesCounters[{i}]"
        cs = use.get("counterSet")
        causes += _label_name(f"{where}.counterSet", cs)
        if isinstance(cs, str):
            if cs in seen_sets:
                causes.append(v.duplicate(f"{where}.counterSet", cs))
            seen_sets.add(cs)
        causes += _counters(f"{where}.counters", use.get("counters"), required=True)
    if not per_device:
        for key in ("nodeName", "nodeSelector", "allNodes"):
            if device.get(key) not in (None, False, ""):
                causes.append(v.invalid(f"{path}.{key}", device[key] if key != "nodeSelector" else
                                        "<value omitted>", "must not be specified when "
                                        "`spec.perDeviceNodeSelection` is not true"))
    return causes


def validate_slice_update(new: Obj, old: Obj) -> list[Cause]:
    causes = validate_slice(new)
    spec, old_spec = _d(new.get("spec")), _d(old.get("spec"))
    for path, a, b in (("spec.nodeName", spec.get("nodeName"), old_spec.get("nodeName")),
                       ("spec.driver", spec.get("driver"), old_spec.get("driver")),
                       ("spec.pool.name", _d(spec.get("pool")).get("name"), _d(old_spec.get("pool")).get("name"))):
        if a != b:
            causes.append(v.invalid(path, a, "field is immutable"))
    return causes


# ---------------------------------------------------------------- pods

def pod_claim_causes(spec: Any, path: str) -> list[Cause]:
    """``spec.resourceClaims`` (unique DNS-label names, exactly one source each) and the containers'
    ``resources.claims`` (naming a pod claim, unique per container)."""
    spec = _d(spec)
    causes: list[Cause] = []
    names: set[str] = set()
    for i, claim in enumerate(_l(spec.get("resourceClaims"))):
        claim = _d(claim)
        where = f"{path}.resourceClaims[{i}]"
        name = claim.get("name")
        if not isinstance(name, str) or not name:
            causes.append(v.required(f"{where}.name"))
        else:
            causes += v.dns1123_label_causes(f"{where}.name", name)
            if name in names:
                causes.append(v.duplicate(f"{where}.name", name))
            names.add(name)
        sources = [k for k in ("resourceClaimName", "resourceClaimTemplateName") if claim.get(k)]
        shown = _go_json({"Name": claim.get("name"), "ResourceClaimName": claim.get("resourceClaimName"),
                          "ResourceClaimTemplateName": claim.get("resourceClaimTemplateName")})
        if not sources:
            causes.append(Cause(where, f"Invalid value: {shown}: must specify one of: `resourceClaimName`, "
                                       "`resourceClaimTemplateName`"))
        elif len(sources) > 1:
            causes.append(Cause(where, f"Invalid value: {shown}: at most one of `resourceClaimName` or "
                                       "`resourceClaimTemplateName` may be specified"))
        for key in sources:
            causes += v.dns1123_subdomain_causes(f"{where}.{key}", str(claim[key]))
    for key in ("initContainers", "containers"):
        for i, c in enumerate(_l(spec.get(key))):
            seen: set[tuple[str, str]] = set()
            for j, ref in enumerate(_l(_d(_d(c).get("resources")).get("claims"))):
                ref = _d(ref)
                where = f"{path}.{key}[{i}].resources.claims[{j}]"
                name = ref.get("name")
                if not name:
                    causes.append(v.required(f"{where}.name"))
                    continue
                pair = (str(name), str(ref.get("request") or ""))
                if pair in seen:
                    causes.append(v.duplicate(where, name))
                    continue
                seen.add(pair)
                if name not in names:
                    causes.append(Cause(where, f"Not found: {v.quote(name)}: must be one of the names in "
                                               f"pod.spec.resourceClaims: {', '.join(sorted(names))}",
                                        "FieldValueNotFound"))
    return causes


def copy_claim_spec(template: Obj) -> Obj:
    """The ResourceClaim spec a template makes (a deep copy: claims never share structure with templates)."""
    return copy.deepcopy(_d(_d(template.get("spec")).get("spec")))
