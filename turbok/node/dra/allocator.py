"""Allocating ResourceClaims from ResourceSlices, as kube-scheduler's DRA plugin does (structured parameters).

Pure: ``Allocator(slices, classes, in_use)`` then ``allocate(claim, node)``
returns the claim's ``status.allocation`` or raises ``Unallocatable`` with why.
The scheduler (``turbok.node.dra.scheduling``) builds one per decision round
from its informer state; the benchmark (bench/dra.py) and the differential
tests drive it directly.

What it does, in kube's order and words:

- pools: the ResourceSlices of one (driver, pool) at their newest
  generation; a pool missing slices (fewer than ``resourceSliceCount``) is
  left out; a slice is usable on the node when it names it (``nodeName``),
  its ``nodeSelector`` matches, or ``allNodes``;
- requests in order; ``exactly`` (``ExactCount`` with ``count``, or
  ``All`` matching devices, none of them in use) and ``firstAvailable``
  (the first subrequest that can be met, tried in order, backtracking when a
  later request or constraint cannot be met);
- a device matches when every selector of its DeviceClass and of the request
  is true (``turbok.api.cel``; results are cached per expression and device);
  a selector that fails at run time fails the allocation with the error,
  as kube's does, rather than skipping the device;
- ``matchAttribute`` / ``distinctAttribute`` constraints across the devices of
  the requests they name (all requests when none);
- devices in use by another claim are skipped, unless the request asks for
  ``adminAccess`` (then the result says so and nothing is consumed), or the
  device ``allowMultipleAllocations`` and has capacity left: each share
  consumes the request's ``capacity.requests`` (else the capacity's
  ``requestPolicy.default``, else all of it), rounded up to the policy's valid
  values or range, and gets a ``shareID``;
- partitionable devices: a device's ``consumesCounters`` must fit in its
  pool's ``sharedCounters`` less what allocated devices consume;
- device taints with ``NoSchedule``/``NoExecute`` must be tolerated by the
  request;
- the result: one entry per device (``request``, ``driver``, ``pool``,
  ``device``, ``adminAccess``, ``tolerations``, ``consumedCapacity``,
  ``shareID``), the class configs then the claim's configs, and a node
  selector on ``metadata.name`` when the devices are local to the node.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any

from turbok.api import cel
from turbok.api.quantity import QuantityError, format_quantity, parse_quantity

__all__ = ["Allocator", "Device", "InUse", "Unallocatable", "device_key", "node_matches"]

Obj = dict[str, Any]
DeviceKey = tuple[str, str, str]  # driver, pool, device


class Unallocatable(Exception):
    """The claim cannot be allocated on this node now; ``str()`` says why (``unschedulable``: retry later)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def device_key(result: Mapping[str, Any]) -> DeviceKey:
    return (str(result.get("driver")), str(result.get("pool")), str(result.get("device")))


def _d(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _q(value: Any) -> Decimal:
    try:
        return parse_quantity(str(value))
    except (QuantityError, ArithmeticError):
        return Decimal(0)


@dataclass
class Device:
    driver: str
    pool: str
    name: str
    obj: Obj
    #: counter set -> counter -> amount (from ``consumesCounters``)
    consumes: dict[str, dict[str, Decimal]]

    @property
    def key(self) -> DeviceKey:
        return (self.driver, self.pool, self.name)

    @property
    def multiple(self) -> bool:
        return bool(self.obj.get("allowMultipleAllocations"))

    def attribute(self, qualified: str) -> Any:
        """A fully qualified attribute's value (``domain/id``; the driver's own domain may be left out)."""
        attrs = _d(self.obj.get("attributes"))
        domain, _, ident = qualified.rpartition("/")
        value = attrs.get(qualified)
        if value is None and domain == self.driver:
            value = attrs.get(ident)
        if not isinstance(value, dict):
            return None
        for key in ("bool", "int", "string", "version"):
            if key in value:
                return (key, value[key])
        return None


@dataclass
class InUse:
    """What allocated claims hold: exclusive devices, shares of multi-allocation devices, shared counters."""

    exclusive: set[DeviceKey] = field(default_factory=set)
    shares: dict[DeviceKey, dict[str, Decimal]] = field(default_factory=dict)
    counters: dict[tuple[str, str, str], dict[str, Decimal]] = field(default_factory=dict)

    @classmethod
    def of(cls, claims: Iterable[Obj], devices: Mapping[DeviceKey, Device] | None = None) -> InUse:
        used = cls()
        for claim in claims:
            used.add(_d(_d(claim.get("status")).get("allocation")), devices or {})
        return used

    def add(self, allocation: Obj, devices: Mapping[DeviceKey, Device]) -> None:
        for res in _l(_d(allocation.get("devices")).get("results")):
            res = _d(res)
            if res.get("adminAccess"):
                continue
            key = device_key(res)
            dev = devices.get(key)
            first = key not in self.exclusive and key not in self.shares
            if res.get("shareID") or res.get("consumedCapacity") or (dev is not None and dev.multiple):
                share = self.shares.setdefault(key, {})
                for name, value in _d(res.get("consumedCapacity")).items():
                    share[name] = share.get(name, Decimal(0)) + _q(value)
            else:
                self.exclusive.add(key)
            if dev is not None and first:
                for cs, counters in dev.consumes.items():
                    used = self.counters.setdefault((dev.driver, dev.pool, cs), {})
                    for name, value in counters.items():
                        used[name] = used.get(name, Decimal(0)) + value


def node_matches(selector: Obj, node_name: str, labels: Mapping[str, str]) -> bool:
    """A core/v1 NodeSelector (terms ORed; expressions and fields ANDed) against one node."""
    for term in _l(selector.get("nodeSelectorTerms")):
        term = _d(term)
        ok = True
        for e in _l(term.get("matchExpressions")):
            ok = ok and _requirement(_d(e), labels.get(str(_d(e).get("key"))), str(_d(e).get("key")) in labels)
        for f in _l(term.get("matchFields")):
            f = _d(f)
            have = node_name if f.get("key") == "metadata.name" else None
            ok = ok and _requirement(f, have, have is not None)
        if ok and (term.get("matchExpressions") or term.get("matchFields")):
            return True
    return False


def _requirement(e: Obj, have: str | None, present: bool) -> bool:
    op, values = e.get("operator"), [str(x) for x in _l(e.get("values"))]
    if op == "In":
        return have in values
    if op == "NotIn":
        return have not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and have is not None and values:
        try:
            return int(have) > int(values[0]) if op == "Gt" else int(have) < int(values[0])
        except ValueError:
            return False
    return False


def _tolerates(tolerations: list[Any], taint: Obj) -> bool:
    for t in tolerations:
        t = _d(t)
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t.get("key") == taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


@dataclass
class _Request:
    name: str  # "req" or "req/sub"
    main: str
    spec: Obj
    klass: Obj


@dataclass
class _Pick:
    request: _Request
    device: Device
    consumed: dict[str, Decimal] | None = None  # a share of a multi-allocation device


class Allocator:
    """Allocation over one view of the slices, classes and what is in use (see the module docstring)."""

    def __init__(self, slices: Iterable[Obj], classes: Mapping[str, Obj], in_use: InUse | None = None, *,
                 claims: Iterable[Obj] = ()) -> None:
        self.classes = classes
        self._pools: dict[tuple[str, str], list[Obj]] = {}
        self.counter_sets: dict[tuple[str, str, str], dict[str, Decimal]] = {}
        self._selected: dict[tuple[str, DeviceKey], bool | str] = {}
        newest: dict[tuple[str, str], int] = {}
        slices = list(slices)
        for s in slices:
            spec = _d(s.get("spec"))
            pool = _d(spec.get("pool"))
            key = (str(spec.get("driver")), str(pool.get("name")))
            newest[key] = max(newest.get(key, -1), int(pool.get("generation") or 0))
        for s in sorted(slices, key=lambda s: str(_d(s.get("metadata")).get("name"))):
            spec = _d(s.get("spec"))
            pool = _d(spec.get("pool"))
            key = (str(spec.get("driver")), str(pool.get("name")))
            if int(pool.get("generation") or 0) == newest[key]:
                self._pools.setdefault(key, []).append(s)
        self._incomplete = {k for k, items in self._pools.items()
                            if len(items) < int(_d(_d(items[0].get("spec")).get("pool")).get("resourceSliceCount") or 1)}
        self.devices: dict[DeviceKey, Device] = {}
        for (driver, pool_name), items in self._pools.items():
            for s in items:
                spec = _d(s.get("spec"))
                for cs in _l(spec.get("sharedCounters")):
                    cs = _d(cs)
                    self.counter_sets[(driver, pool_name, str(cs.get("name")))] = {
                        n: _q(_d(c).get("value")) for n, c in _d(cs.get("counters")).items()}
                for dev in _l(spec.get("devices")):
                    dev = _d(dev)
                    consumes = {str(_d(u).get("counterSet")): {n: _q(_d(c).get("value"))
                                                              for n, c in _d(_d(u).get("counters")).items()}
                                for u in _l(dev.get("consumesCounters"))}
                    d = Device(driver, pool_name, str(dev.get("name")), dev, consumes)
                    self.devices[d.key] = d
        self.in_use = in_use if in_use is not None else InUse.of(claims, self.devices)

    # ------------------------------------------------------------ what a node sees

    def _node_devices(self, node_name: str, labels: Mapping[str, str]) -> list[Device]:
        out: list[Device] = []
        for key in sorted(self._pools):
            if key in self._incomplete:
                continue
            for s in self._pools[key]:
                spec = _d(s.get("spec"))
                if spec.get("perDeviceNodeSelection"):
                    for dev in _l(spec.get("devices")):
                        if self._reaches(_d(dev), node_name, labels):
                            out.append(self.devices[(key[0], key[1], str(_d(dev).get("name")))])
                    continue
                if not self._reaches(spec, node_name, labels):
                    continue
                out += [self.devices[(key[0], key[1], str(_d(dev).get("name")))] for dev in _l(spec.get("devices"))]
        return out

    @staticmethod
    def _reaches(where: Obj, node_name: str, labels: Mapping[str, str]) -> bool:
        if where.get("nodeName"):
            return bool(where["nodeName"] == node_name)
        if where.get("allNodes"):
            return True
        if isinstance(where.get("nodeSelector"), dict):
            return node_matches(where["nodeSelector"], node_name, labels)
        return False

    # ------------------------------------------------------------ matching one device

    def selected(self, expression: str, device: Device) -> bool:
        """A selector's verdict on a device (cached); ``Unallocatable`` when it fails to evaluate."""
        key = (expression, device.key)
        found = self._selected.get(key)
        if found is None:
            try:
                program = cel.compile_selector(expression)
            except cel.CelCompileError as e:
                raise Unallocatable(f"CEL expression {expression!r} does not compile: {e}", permanent=True) from None
            data = cel.device_activation(device.driver, device.obj, domains=cel.literal_domains((expression,)))
            try:
                found = program.evaluate(data) is True
            except cel.CelEvalError as e:
                found = f"CEL runtime error: {e}"
            self._selected[key] = found
        if isinstance(found, str):
            raise Unallocatable(f"device {'/'.join(device.key)}: {found}", permanent=True)
        return found

    def _matches(self, req: _Request, device: Device) -> bool:
        for sel in (*_l(_d(req.klass.get("spec")).get("selectors")), *_l(req.spec.get("selectors"))):
            expression = str(_d(_d(sel).get("cel")).get("expression", ""))
            if not self.selected(expression, device):
                return False
        tolerations = _l(req.spec.get("tolerations"))
        for taint in _l(device.obj.get("taints")):
            taint = _d(taint)
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(tolerations, taint):
                return False
        capacity = _d(device.obj.get("capacity"))
        for name, value in _d(_d(req.spec.get("capacity")).get("requests")).items():
            have = capacity.get(name) or capacity.get(name.rpartition("/")[2] if name.startswith(device.driver + "/")
                                                      else name)
            if have is None or _q(_d(have).get("value")) < _q(value):
                return False
        return True

    def _consumption(self, req: _Request, device: Device) -> dict[str, Decimal] | None:
        """What one share of a multi-allocation device takes for ``req`` (None: no valid amount)."""
        asked = _d(_d(req.spec.get("capacity")).get("requests"))
        out: dict[str, Decimal] = {}
        for name, cap in _d(device.obj.get("capacity")).items():
            cap = _d(cap)
            policy = _d(cap.get("requestPolicy"))
            value = _q(cap.get("value"))
            want = asked.get(name, asked.get(f"{device.driver}/{name}"))
            amount = _q(want) if want is not None else (_q(policy["default"]) if "default" in policy else value)
            valid = [_q(x) for x in _l(policy.get("validValues"))]
            if valid:
                bigger = [x for x in valid if x >= amount]
                if not bigger:
                    return None
                amount = bigger[0]
            rng = _d(policy.get("validRange"))
            if rng:
                low = _q(rng.get("min"))
                amount = max(amount, low)
                step = _q(rng.get("step")) if rng.get("step") is not None else Decimal(0)
                if step > 0:
                    amount = low + ((amount - low) / step).to_integral_value(rounding=ROUND_CEILING) * step
                if rng.get("max") is not None and amount > _q(rng["max"]):
                    return None
            out[name] = amount
        return out

    # ------------------------------------------------------------ one claim

    def _requests(self, claim: Obj) -> list[list[_Request]]:
        """Each request's alternatives, in order (one for ``exactly``, the subrequests for ``firstAvailable``)."""
        out: list[list[_Request]] = []
        for req in _l(_d(_d(claim.get("spec")).get("devices")).get("requests")):
            req = _d(req)
            name = str(req.get("name"))
            options = [(name, _d(req["exactly"]))] if isinstance(req.get("exactly"), dict) else \
                [(f"{name}/{_d(s).get('name')}", _d(s)) for s in _l(req.get("firstAvailable"))]
            alts = []
            for full, spec in options:
                class_name = str(spec.get("deviceClassName"))
                klass = self.classes.get(class_name)
                if klass is None:
                    raise Unallocatable(f"request {full}: device class {class_name} does not exist")
                alts.append(_Request(full, name, spec, klass))
            out.append(alts)
        return out

    def allocate(self, claim: Obj, node_name: str, labels: Mapping[str, str] | None = None) -> Obj:
        """``status.allocation`` for ``claim`` on the node, or ``Unallocatable``."""
        labels = labels or {}
        requests = self._requests(claim)
        constraints = [_d(c) for c in _l(_d(_d(claim.get("spec")).get("devices")).get("constraints"))]
        candidates = self._node_devices(node_name, labels)
        picks: list[_Pick] = []
        taken: dict[DeviceKey, int] = {}  # devices picked by this claim (exclusive), or shares picked
        counters: dict[tuple[str, str, str], dict[str, Decimal]] = {}
        shares: dict[DeviceKey, dict[str, Decimal]] = {}

        def counters_fit(dev: Device) -> bool:
            if dev.key in taken or dev.key in self.in_use.shares or dev.key in self.in_use.exclusive:
                return True  # already counted (a share of a device that holds its counters)
            for cs, wanted in dev.consumes.items():
                total = self.counter_sets.get((dev.driver, dev.pool, cs))
                if total is None:
                    return False
                used = self.in_use.counters.get((dev.driver, dev.pool, cs), {})
                mine = counters.get((dev.driver, dev.pool, cs), {})
                for name, amount in wanted.items():
                    if used.get(name, Decimal(0)) + mine.get(name, Decimal(0)) + amount > total.get(name, Decimal(0)):
                        return False
            return True

        def constraint_ok(req: _Request, dev: Device) -> bool:
            for con in constraints:
                names = [str(n) for n in _l(con.get("requests"))]
                if names and req.main not in names and req.name not in names:
                    continue
                attr = str(con.get("matchAttribute") or con.get("distinctAttribute") or "")
                value = dev.attribute(attr)
                if value is None:
                    return False
                others = [p.device.attribute(attr) for p in picks
                          if not names or p.request.main in names or p.request.name in names]
                if con.get("matchAttribute") is not None and others and others[0] != value:
                    return False
                if con.get("distinctAttribute") is not None and value in others:
                    return False
            return True

        def usable(req: _Request, dev: Device) -> tuple[bool, dict[str, Decimal] | None]:
            if req.spec.get("adminAccess"):
                return dev.key not in taken, None
            if dev.multiple:
                if dev.key in self.in_use.exclusive:
                    return False, None
                need = self._consumption(req, dev)
                if need is None:
                    return False, None
                have = {n: _q(_d(c).get("value")) for n, c in _d(dev.obj.get("capacity")).items()}
                used = self.in_use.shares.get(dev.key, {})
                mine = shares.get(dev.key, {})
                if any(used.get(n, Decimal(0)) + mine.get(n, Decimal(0)) + a > have.get(n, Decimal(0))
                       for n, a in need.items()):
                    return False, None
                return counters_fit(dev), need
            if dev.key in taken or dev.key in self.in_use.exclusive or dev.key in self.in_use.shares:
                return False, None
            return counters_fit(dev), None

        def take(req: _Request, dev: Device, need: dict[str, Decimal] | None) -> None:
            fresh = dev.key not in taken
            picks.append(_Pick(req, dev, need))
            taken[dev.key] = taken.get(dev.key, 0) + 1
            if need is not None:
                mine = shares.setdefault(dev.key, {})
                for n, a in need.items():
                    mine[n] = mine.get(n, Decimal(0)) + a
            if fresh and not req.spec.get("adminAccess") and dev.key not in self.in_use.shares:
                for cs, wanted in dev.consumes.items():
                    mine_c = counters.setdefault((dev.driver, dev.pool, cs), {})
                    for n, a in wanted.items():
                        mine_c[n] = mine_c.get(n, Decimal(0)) + a

        def undo() -> None:
            pick = picks.pop()
            dev, req = pick.device, pick.request
            taken[dev.key] -= 1
            if pick.consumed is not None:
                for n, a in pick.consumed.items():
                    shares[dev.key][n] -= a
            if not taken[dev.key]:
                del taken[dev.key]
                if not req.spec.get("adminAccess") and dev.key not in self.in_use.shares:
                    for cs, wanted in dev.consumes.items():
                        for n, a in wanted.items():
                            counters[(dev.driver, dev.pool, cs)][n] -= a

        def matching(req: _Request) -> Iterator[Device]:
            for dev in candidates:
                if self._matches(req, dev):
                    yield dev

        def fill(i: int) -> bool:
            if i == len(requests):
                return True
            for req in requests[i]:
                mode = req.spec.get("allocationMode") or "ExactCount"
                if mode == "All":
                    devices = list(matching(req))
                    if not devices:
                        continue
                    ok = True
                    pushed = 0
                    for dev in devices:
                        good, need = usable(req, dev)
                        if not good or not constraint_ok(req, dev):
                            ok = False
                            break
                        take(req, dev, need)
                        pushed += 1
                    if ok and fill(i + 1):
                        return True
                    for _ in range(pushed):
                        undo()
                    continue
                count = int(req.spec.get("count") or 1)
                pool = list(matching(req))
                if choose(req, pool, 0, count, i):
                    return True
            return False

        def choose(req: _Request, pool: list[Device], start: int, left: int, i: int) -> bool:
            if left == 0:
                return fill(i + 1)
            for j in range(start, len(pool) - left + 1):
                dev = pool[j]
                good, need = usable(req, dev)
                if not good or not constraint_ok(req, dev):
                    continue
                take(req, dev, need)
                if choose(req, pool, j + 1, left - 1, i):
                    return True
                undo()
            return False

        if not fill(0):
            raise Unallocatable("cannot allocate all claims")
        return self._result(claim, picks, node_name)

    def _result(self, claim: Obj, picks: list[_Pick], node_name: str) -> Obj:
        results: list[Obj] = []
        for p in picks:
            res: Obj = {"request": p.request.name, "driver": p.device.driver, "pool": p.device.pool,
                        "device": p.device.name}
            if p.request.spec.get("adminAccess"):
                res["adminAccess"] = True
            if p.request.spec.get("tolerations"):
                res["tolerations"] = [dict(t) for t in p.request.spec["tolerations"]]
            if p.consumed is not None:
                res["shareID"] = str(uuid.uuid4())
                res["consumedCapacity"] = {n: format_quantity(a) for n, a in p.consumed.items()}
            results.append(res)
        config: list[Obj] = []
        by_class: dict[str, list[str]] = {}
        for p in picks:
            names = by_class.setdefault(str(p.request.spec.get("deviceClassName")), [])
            if p.request.name not in names:
                names.append(p.request.name)
        for class_name, names in by_class.items():
            for conf in _l(_d(self.classes[class_name].get("spec")).get("config")):
                config.append({"source": "FromClass", "requests": list(names), **{k: v for k, v in _d(conf).items()}})
        for conf in _l(_d(_d(claim.get("spec")).get("devices")).get("config")):
            conf = _d(conf)
            config.append({"source": "FromClaim", **({"requests": conf["requests"]} if conf.get("requests") else {}),
                           **{k: v for k, v in conf.items() if k != "requests"}})
        devices: Obj = {"results": results}
        if config:
            devices["config"] = config
        allocation: Obj = {"devices": devices}
        local = any(self._slice_of(p.device).get("nodeName") for p in picks)
        if local:
            allocation["nodeSelector"] = {"nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": [node_name]}]}]}
        return allocation

    def _slice_of(self, device: Device) -> Obj:
        for s in self._pools.get((device.driver, device.pool), []):
            if any(_d(d).get("name") == device.name for d in _l(_d(s.get("spec")).get("devices"))):
                return _d(s.get("spec"))
        return {}

    def reserve(self, allocation: Obj) -> None:
        """Count a new allocation as in use (the next claim of the same round sees it)."""
        self.in_use.add(allocation, self.devices)
