"""Endpoints and EndpointSlices of Services, as kube-controller-manager's two controllers write them.

For every Service with a selector (not ``ExternalName``), from the Pods of its
namespace that the selector matches, have an IP and are not terminal:

- ``v1`` Endpoints named like the Service: labels = the Service's plus
  ``endpoints.kubernetes.io/managed-by: endpoint-controller`` (and
  ``service.kubernetes.io/headless: ""`` when ``clusterIP: None``); subsets
  grouping addresses by their port set, Ready Pods under ``addresses``, others
  under ``notReadyAddresses`` (all under ``addresses`` with
  ``publishNotReadyAddresses``), terminating Pods left out; each address with
  ``ip``, ``nodeName``, ``targetRef`` (and ``hostname`` for a Pod whose
  ``subdomain`` is the Service). Deleted with its Service. No ownerReferences.
- ``discovery.k8s.io/v1`` EndpointSlices named ``<service>-<random>``,
  labelled ``kubernetes.io/service-name``,
  ``endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io``,
  the Service's labels (and the headless label), controlled by the Service (so
  they go with it by garbage collection); ``addressType: IPv4``, at most 100
  endpoints each, with conditions ``ready`` / ``serving`` / ``terminating``;
  one empty slice when nothing matches.

Both carry ``endpoints.kubernetes.io/last-change-trigger-time``. Ports: each
Service port's ``targetPort`` (a number, or a container port's name) in the
Pod. The controller keeps summaries of Pods and Service selectors from the
watched changes, so a Pod change touches only the Services whose selector it
can match, and a pass costs no listing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from turbok.api.kinds import ENDPOINT_SLICE, ENDPOINTS, POD, SERVICE, Kind
from turbok.api.status import AlreadyExists
from turbok.controllers.base import DONE, Key, Reconciler, Result
from turbok.controllers.client import Client, Obj

__all__ = ["EndpointsReconciler"]

MANAGED_BY_ENDPOINTS = "endpoints.kubernetes.io/managed-by"
ENDPOINTS_CONTROLLER = "endpoint-controller"
SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY_SLICES = "endpointslice.kubernetes.io/managed-by"
SLICES_CONTROLLER = "endpointslice-controller.k8s.io"
HEADLESS = "service.kubernetes.io/headless"
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
#: kube-controller-manager's --max-endpoints-per-slice default.
MAX_PER_SLICE = 100
_RESERVED = (SERVICE_NAME, MANAGED_BY_SLICES, HEADLESS)


@dataclass(frozen=True)
class _PodView:
    """What endpoints need of a Pod, kept from the watched changes."""

    name: str
    uid: str
    labels: tuple[tuple[str, str], ...]
    ips: tuple[str, ...]
    ready: bool
    terminating: bool
    terminal: bool
    node: str
    hostname: str
    subdomain: str
    #: (name, protocol, number) of every container port, sidecars' included
    ports: tuple[tuple[str, str, int], ...]
    ready_since: str

    @classmethod
    def of(cls, pod: Obj) -> _PodView:
        md, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None) or {}
        ips = [e.get("ip") for e in status.get("podIPs") or [] if e.get("ip")] or (
            [status["podIP"]] if status.get("podIP") else [])
        containers = [*(spec.get("containers") or []),
                      *(c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always")]
        ports = tuple((p.get("name") or "", p.get("protocol") or "TCP", int(p.get("containerPort") or 0))
                      for c in containers for p in c.get("ports") or [])
        return cls(name=md["name"], uid=md.get("uid", ""), labels=tuple(sorted((md.get("labels") or {}).items())),
                   ips=tuple(str(ip) for ip in ips), ready=ready.get("status") == "True",
                   terminating=bool(md.get("deletionTimestamp")),
                   terminal=status.get("phase") in ("Succeeded", "Failed"), node=spec.get("nodeName") or "",
                   hostname=spec.get("hostname") or "", subdomain=spec.get("subdomain") or "", ports=ports,
                   ready_since=ready.get("lastTransitionTime") or "")

    def matches(self, selector: dict[str, str]) -> bool:
        labels = dict(self.labels)
        return all(labels.get(k) == v for k, v in selector.items())

    def target(self, namespace: str) -> Obj:
        return {"kind": "Pod", "namespace": namespace, "name": self.name, "uid": self.uid}


def _find_port(pod: _PodView, port: Obj) -> int | None:
    """The Pod's port for a Service port (kube's FindPort): its targetPort number, or a container port by name."""
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    protocol = port.get("protocol") or "TCP"
    return next((number for name, proto, number in pod.ports if name == target and proto == protocol), None)


def _headless(service: Obj) -> bool:
    return (service.get("spec") or {}).get("clusterIP") in (None, "", "None")


def _ipv4(ip: str) -> bool:
    return ":" not in ip


class EndpointsReconciler(Reconciler):
    concurrency = 2
    coalesce = 0.05  # a burst of Pod changes (a pool filling) costs one pass per Service

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.kind = SERVICE
        self._pods: dict[str, dict[str, _PodView]] = {}
        self._selectors: dict[Key, dict[str, str]] = {}
        # (namespace, label key, value) -> Services whose selector has that pair: a Pod's labels find
        # the Services it may belong to without looking at every Service.
        self._by_pair: dict[tuple[str, str, str], set[str]] = {}
        self._everything: dict[str, set[str]] = {}  # namespace -> Services with an empty selector
        self._slices: dict[Key, set[str]] = {}  # Service -> names of the slices this controller keeps for it

    async def start(self) -> None:
        for service in await self.client.list(SERVICE):
            self._observe_service(service, deleted=False)
        for pod in await self.client.list(POD):
            self._observe_pod(pod, deleted=False)
        for eps in await self.client.list(ENDPOINT_SLICE):
            self._observe_slice(eps, deleted=False)
        # Endpoints whose Service went while no controller ran: their pass deletes them (kube's
        # checkLeftoverEndpoints).
        for ep in await self.client.list(ENDPOINTS):
            md = ep["metadata"]
            if (md.get("labels") or {}).get(MANAGED_BY_ENDPOINTS) == ENDPOINTS_CONTROLLER:
                self.enqueue((md.get("namespace", ""), md["name"]), 0.0)

    # ------------------------------------------------------------ indexes

    def _observe_service(self, service: Obj, *, deleted: bool) -> None:
        key = (service["metadata"].get("namespace", ""), service["metadata"]["name"])
        old = self._selectors.pop(key, None)
        if old is not None:
            if not old:
                self._everything.get(key[0], set()).discard(key[1])
            for k, v in old.items():
                self._by_pair.get((key[0], k, v), set()).discard(key[1])
        spec = service.get("spec") or {}
        selector = spec.get("selector")
        if deleted or selector is None or spec.get("type") == "ExternalName":
            return
        self._selectors[key] = dict(selector)
        if not selector:
            self._everything.setdefault(key[0], set()).add(key[1])
        for k, v in selector.items():
            self._by_pair.setdefault((key[0], k, v), set()).add(key[1])

    def _services_for(self, namespace: str, labels: Iterable[tuple[str, str]]) -> set[str]:
        found = set(self._everything.get(namespace, ()))
        for k, v in labels:
            for name in self._by_pair.get((namespace, k, v), ()):
                if name not in found and all(dict(labels).get(sk) == sv
                                             for sk, sv in self._selectors[(namespace, name)].items()):
                    found.add(name)
        return found

    def _observe_pod(self, pod: Obj, *, deleted: bool) -> set[str]:
        """Index a Pod's change; the Services whose endpoints it may change."""
        ns = pod["metadata"].get("namespace", "")
        pods = self._pods.setdefault(ns, {})
        old = pods.pop(pod["metadata"]["name"], None)
        new = None if deleted else _PodView.of(pod)
        if new is not None:
            pods[new.name] = new
        if old == new:
            return set()  # e.g. an annotation: nothing endpoints show changed
        touched: set[str] = set()
        for view in (old, new):
            if view is not None:
                touched |= self._services_for(ns, view.labels)
        return touched

    def _observe_slice(self, eps: Obj, *, deleted: bool) -> Key | None:
        md = eps["metadata"]
        labels = md.get("labels") or {}
        if labels.get(MANAGED_BY_SLICES) != SLICES_CONTROLLER or not labels.get(SERVICE_NAME):
            return None
        key = (md.get("namespace", ""), labels[SERVICE_NAME])
        names = self._slices.setdefault(key, set())
        if deleted:
            names.discard(md["name"])
        else:
            names.add(md["name"])
        return key

    def related(self, kind: Kind, obj: Obj, deleted: bool) -> Iterable[Key]:
        md = obj["metadata"]
        ns = md.get("namespace", "")
        if kind is POD:
            for name in self._observe_pod(obj, deleted=deleted):
                yield (ns, name)
        elif kind is ENDPOINT_SLICE:
            key = self._observe_slice(obj, deleted=deleted)
            if key is not None and deleted:
                yield key
        elif kind is ENDPOINTS and deleted and (md.get("labels") or {}).get(
                MANAGED_BY_ENDPOINTS) == ENDPOINTS_CONTROLLER:
            yield (ns, md["name"])

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, namespace: str, name: str) -> Result:
        service = await self.client.try_get(SERVICE, namespace, name)
        if service is not None:
            self._observe_service(service, deleted=False)
        else:  # gone: out of every index (a bare pop left it in _by_pair, and a Pod's change then failed)
            self._observe_service({"metadata": {"namespace": namespace, "name": name}}, deleted=True)
        if service is None or service["metadata"].get("deletionTimestamp"):
            current = await self.client.try_get(ENDPOINTS, namespace, name)
            if current is not None and (current["metadata"].get("labels") or {}).get(
                    MANAGED_BY_ENDPOINTS) == ENDPOINTS_CONTROLLER:
                await self.client.delete(ENDPOINTS, namespace, name, uid=current["metadata"]["uid"])
            return DONE  # its slices go by garbage collection
        selector = self._selectors.get((namespace, name))
        if selector is None:
            return DONE  # no selector: endpoints are somebody else's
        pods = sorted((p for p in self._pods.get(namespace, {}).values() if p.matches(selector) and not p.terminal
                       and p.ips), key=lambda p: p.name)
        trigger = max([service["metadata"].get("creationTimestamp") or "", *(p.ready_since for p in pods)])
        await self._write_endpoints(service, pods, trigger)
        await self._write_slices(service, pods, trigger)
        return DONE

    # ------------------------------------------------------------ Endpoints

    async def _write_endpoints(self, service: Obj, pods: list[_PodView], trigger: str) -> None:
        md, spec = service["metadata"], service.get("spec") or {}
        publish = bool(spec.get("publishNotReadyAddresses"))
        ports: list[Obj] = spec.get("ports") or []
        groups: dict[tuple[tuple[Any, ...], ...], dict[str, list[Obj]]] = {}
        for pod in pods:
            if pod.terminating and not publish:
                continue
            address: Obj = {"ip": pod.ips[0], "targetRef": pod.target(md["namespace"])}
            if pod.node:
                address["nodeName"] = pod.node
            if pod.hostname and pod.subdomain == md["name"]:
                address["hostname"] = pod.hostname
            found: list[Obj] = []
            for port in ports:
                number = _find_port(pod, port)
                if number is None:
                    continue
                entry: Obj = {"port": number, "protocol": port.get("protocol") or "TCP"}
                if port.get("name"):
                    entry["name"] = port["name"]
                if port.get("appProtocol"):
                    entry["appProtocol"] = port["appProtocol"]
                found.append(entry)
            if ports and not found:
                continue
            if not ports and not _headless(service):
                continue
            group_key = tuple(sorted(tuple(sorted(p.items())) for p in found))
            group = groups.setdefault(group_key, {"addresses": [], "notReadyAddresses": [], "ports": found})
            group["addresses" if publish or pod.ready else "notReadyAddresses"].append(address)
        subsets = []
        for key in sorted(groups):
            group = groups[key]
            subset: Obj = {k: sorted(v, key=lambda a: (a["ip"], a["targetRef"]["name"]))
                           for k, v in group.items() if k != "ports" and v}
            if group["ports"]:
                subset["ports"] = sorted(group["ports"], key=lambda p: (p.get("name", ""), p["port"], p["protocol"]))
            subsets.append(subset)
        labels = {**(md.get("labels") or {}), MANAGED_BY_ENDPOINTS: ENDPOINTS_CONTROLLER}
        if _headless(service):
            labels[HEADLESS] = ""
        else:
            labels.pop(HEADLESS, None)
        current = await self.client.try_get(ENDPOINTS, md["namespace"], md["name"])
        if current is not None and (current.get("subsets") or []) == subsets and (
                current["metadata"].get("labels") or {}) == labels:
            return
        body: Obj = copy.deepcopy(current) if current is not None else {
            "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": md["name"], "namespace": md["namespace"]}}
        body["metadata"]["labels"] = labels
        body["metadata"].setdefault("annotations", {})[TRIGGER_TIME] = trigger
        if subsets:
            body["subsets"] = subsets
        else:
            body.pop("subsets", None)
        if current is None:
            try:
                await self.client.create(ENDPOINTS, body)
            except AlreadyExists:
                self.enqueue((md["namespace"], md["name"]), 0.0)
        else:
            await self.client.update(ENDPOINTS, body)

    # ------------------------------------------------------------ EndpointSlices

    def _slice_bodies(self, service: Obj, pods: list[_PodView]) -> list[tuple[list[Obj], list[Obj]]]:
        """(endpoints, ports) of each slice the Service should have, at most ``MAX_PER_SLICE`` endpoints each."""
        md, spec = service["metadata"], service.get("spec") or {}
        publish = bool(spec.get("publishNotReadyAddresses"))
        ports: list[Obj] = spec.get("ports") or []
        by_ports: dict[tuple[tuple[Any, ...], ...], tuple[list[Obj], list[Obj]]] = {}
        for pod in pods:
            addresses = [ip for ip in pod.ips if _ipv4(ip)]
            if not addresses:
                continue
            found: list[Obj] = []
            if ports or not _headless(service):
                for port in ports:
                    number = _find_port(pod, port)
                    if number is None:
                        continue
                    entry: Obj = {"name": port.get("name") or "", "port": number,
                                  "protocol": port.get("protocol") or "TCP"}
                    if port.get("appProtocol"):
                        entry["appProtocol"] = port["appProtocol"]
                    found.append(entry)
            endpoint: Obj = {"addresses": addresses,
                             "conditions": {"ready": publish or (pod.ready and not pod.terminating),
                                            "serving": pod.ready, "terminating": pod.terminating},
                             "targetRef": pod.target(md["namespace"])}
            if pod.node:
                endpoint["nodeName"] = pod.node
            if pod.hostname and pod.subdomain == md["name"]:
                endpoint["hostname"] = pod.hostname
            key = tuple(tuple(sorted(p.items())) for p in found)
            by_ports.setdefault(key, ([], found))[0].append(endpoint)
        out: list[tuple[list[Obj], list[Obj]]] = []
        for key in sorted(by_ports):
            endpoints, found = by_ports[key]
            for i in range(0, len(endpoints), MAX_PER_SLICE):
                out.append((endpoints[i:i + MAX_PER_SLICE], found))
        return out or [([], [])]  # a placeholder: the Service has no endpoints

    async def _write_slices(self, service: Obj, pods: list[_PodView], trigger: str) -> None:
        md = service["metadata"]
        ns, name = md["namespace"], md["name"]
        labels = {k: v for k, v in (md.get("labels") or {}).items() if k not in _RESERVED}
        if _headless(service):
            labels[HEADLESS] = ""
        labels[SERVICE_NAME] = name
        labels[MANAGED_BY_SLICES] = SLICES_CONTROLLER
        owner = {"apiVersion": "v1", "kind": "Service", "name": name, "uid": md["uid"], "controller": True,
                 "blockOwnerDeletion": True}
        current = []
        for slice_name in sorted(self._slices.get((ns, name), ())):
            eps = await self.client.try_get(ENDPOINT_SLICE, ns, slice_name)
            if eps is not None and any(r.get("uid") == md["uid"] for r in eps["metadata"].get("ownerReferences") or []):
                current.append(eps)
        wanted = self._slice_bodies(service, pods)
        for i, (endpoints, ports) in enumerate(wanted):
            if i < len(current):
                eps = current[i]
                if (eps.get("endpoints") or []) == endpoints and (eps.get("ports") or []) == ports and (
                        eps["metadata"].get("labels") or {}) == labels and eps.get("addressType") == "IPv4":
                    continue
                body = copy.deepcopy(eps)
                body.update({"addressType": "IPv4", "endpoints": endpoints, "ports": ports})
                body["metadata"]["labels"] = labels
                body["metadata"].setdefault("annotations", {})[TRIGGER_TIME] = trigger
                await self.client.update(ENDPOINT_SLICE, body)
                continue
            created = await self.client.create(ENDPOINT_SLICE, {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"generateName": f"{name}-", "namespace": ns, "labels": labels,
                             "annotations": {TRIGGER_TIME: trigger}, "ownerReferences": [owner]},
                "addressType": "IPv4", "endpoints": endpoints, "ports": ports})
            self._slices.setdefault((ns, name), set()).add(created["metadata"]["name"])
        for eps in current[len(wanted):]:
            await self.client.delete(ENDPOINT_SLICE, ns, eps["metadata"]["name"], uid=eps["metadata"]["uid"])
