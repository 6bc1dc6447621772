"""Per-kind rules of the built-in kinds, as kube-apiserver's REST strategies apply them.

The registry asks a kind's ``Strategy`` at fixed points of every write, after
the schema has pruned, defaulted and type-checked the object and before
admission (LimitRanges, quotas) and the commit:

- ``decode(obj)``: what decoding JSON into the Go type does (a Secret's
  base64 checked and ``stringData`` merged into ``data``); a 400 if it fails.
- ``default(obj)``: Go defaulting (``SetDefaults_*``) of what kube fills in.
- ``prepare_create(obj, ctx)``: server-owned fields (a Pod's initial status,
  a Service's clusterIP), ``ctx`` giving read access to the store.
- ``prepare_update(new, old)``: what an update keeps (a Service's ClusterIP).
- ``validate(obj)`` / ``validate_update(new, old)``: causes for a 422 (an
  update is checked by ``validate_update`` alone, which includes ``validate``
  where kube's does: not for Pods).
- ``prepare_status_update`` / ``validate_status_update``: the same for a
  write of the status subresource.
- ``grace_period(obj, requested)``: None when the kind is not deleted
  gracefully (everything but Pods), else the seconds to wait (0: at once).

The rules themselves are pure functions in ``turbok.api`` (one module per
noun); this module only wires them to kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from turbok.api import config, dra, endpointslice, networkpolicy, node, pod, service, storage
from turbok.api.kinds import (
    CONFIG_MAP,
    DEVICE_CLASS,
    ENDPOINT_SLICE,
    LEASE,
    NETWORK_POLICY,
    NODE,
    PERSISTENT_VOLUME,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    RESOURCE_CLAIM,
    RESOURCE_CLAIM_TEMPLATE,
    RESOURCE_SLICE,
    SECRET,
    SERVICE,
    STORAGE_CLASS,
    Kind,
)
from turbok.api.status import Cause

__all__ = ["STRATEGIES", "Strategy", "strategy_of"]

Obj = dict[str, Any]


def _nothing(_: Obj) -> None:
    return None


def _no_causes(*_: Obj) -> list[Cause]:
    return []


def _nothing2(_: Obj, __: Obj) -> None:
    return None


@dataclass(frozen=True)
class Strategy:
    decode: Callable[[Obj], None] = _nothing
    default: Callable[[Obj], None] = _nothing
    prepare_create: Callable[[Obj], None] = _nothing
    validate: Callable[[Obj], list[Cause]] = _no_causes
    validate_update: Callable[[Obj, Obj], list[Cause]] = _no_causes
    prepare_update: Callable[[Obj, Obj], None] = _nothing2
    prepare_status_update: Callable[[Obj, Obj], None] = _nothing2
    validate_status_update: Callable[[Obj, Obj], list[Cause]] = _no_causes
    grace_period: Callable[[Obj, int | None], int] | None = None


_GENERIC = Strategy()

#: Strategies by ``Kind.key``.
STRATEGIES: dict[str, Strategy] = {
    POD.key: Strategy(default=pod.set_defaults, prepare_create=pod.prepare_create, validate=pod.validate,
                      validate_update=pod.validate_update, prepare_status_update=pod.prepare_status_update,
                      validate_status_update=pod.validate_status_update, grace_period=pod.grace_period),
    SERVICE.key: Strategy(default=service.set_defaults, prepare_create=service.prepare_create,
                          validate=service.validate, prepare_update=service.keep_allocated,
                          validate_update=service.validate_update),
    SECRET.key: Strategy(decode=config.decode_secret, validate=config.validate_secret,
                         validate_update=config.validate_secret_update),
    CONFIG_MAP.key: Strategy(decode=config.decode_configmap, validate=config.validate_configmap,
                             validate_update=config.validate_configmap_update),
    PERSISTENT_VOLUME_CLAIM.key: Strategy(default=storage.set_pvc_defaults, prepare_create=storage.pvc_prepare_create,
                                          validate=storage.validate_pvc, validate_update=storage.validate_pvc_update),
    PERSISTENT_VOLUME.key: Strategy(default=storage.set_pv_defaults, prepare_create=storage.pv_prepare_create,
                                    validate=storage.validate_pv, validate_update=storage.validate_pv_update),
    STORAGE_CLASS.key: Strategy(default=storage.set_storage_class_defaults, validate=storage.validate_storage_class,
                                validate_update=storage.validate_storage_class_update),
    NODE.key: Strategy(validate=node.validate, validate_update=node.validate_update),
    ENDPOINT_SLICE.key: Strategy(default=endpointslice.set_defaults, validate=endpointslice.validate,
                                 validate_update=endpointslice.validate_update),
    LEASE.key: Strategy(validate=endpointslice.validate_lease, validate_update=endpointslice.validate_lease_update),
    NETWORK_POLICY.key: Strategy(default=networkpolicy.set_defaults, validate=networkpolicy.validate,
                                 validate_update=networkpolicy.validate_update),
    DEVICE_CLASS.key: Strategy(validate=dra.validate_device_class, validate_update=dra.validate_device_class_update),
    RESOURCE_CLAIM.key: Strategy(default=dra.set_claim_defaults, prepare_create=dra.prepare_claim,
                                 validate=dra.validate_claim,
                                 validate_update=dra.validate_claim_update,
                                 validate_status_update=dra.validate_claim_status_update),
    RESOURCE_CLAIM_TEMPLATE.key: Strategy(default=dra.set_template_defaults, validate=dra.validate_template,
                                          validate_update=dra.validate_template_update),
    RESOURCE_SLICE.key: Strategy(prepare_create=dra.prepare_slice, prepare_update=dra.prepare_slice,
                                 validate=dra.validate_slice, validate_update=dra.validate_slice_update),
}


def strategy_of(kind: Kind) -> Strategy:
    return STRATEGIES.get(kind.key, _GENERIC)
