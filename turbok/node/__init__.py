"""The embedded node: a kubelet's job on one machine.

Owns running the Pods bound to this machine and saying how they are, as a
kubelet does, with the kubelet's names, reasons and Events:

- ``node`` (composition: ``Node``, started by ``turbok.embedded.controlplane``
  beside the controllers), ``nodeinfo`` (the Node object, its capacity and
  conditions, the Lease heartbeat), ``scheduler`` (binding unscheduled Pods
  here when they fit; on a cluster kube-scheduler does it), ``podworker`` (one
  worker per Pod: pod sandbox, init containers, restarts, probes, grace
  periods, deletion), ``reaper`` (teardowns bounded, removals finished in the
  background after their Pods are gone), ``status`` (Pod status as the kubelet computes it, and
  the coalescing writer of ``pods/status``), ``restarts`` (CrashLoopBackOff and
  how a container ended), ``suspend`` (state kept for a Pod deleted with
  ``turbok.dev/on-delete``: hibernate/stop, resume), ``events`` (core/v1 Events,
  aggregated, written off the hot path), ``clock``, ``client`` (the ``Client``
  protocol, restated), ``testing`` (a fake ``PodRuntime`` and a fake clock);
  helper modules for a Pod's inputs: ``env``, ``volumes``, ``storage`` (local
  PersistentVolumes), ``probes``, ``security``; ``streams`` (logs, exec,
  attach, port-forward served to the API server), ``logs`` (CRI log files read
  as the kubelet reads them), ``routerpod`` (the router's mirror Pod and its
  Service ``sandbox-router-svc``), ``netpolicy`` (NetworkPolicy enforced on the
  pod network, a CNI agent's job on a cluster; the pods' resolv.conf and DNS).

Reads: Pods (``spec.nodeName`` = this node, and unscheduled ones for the
scheduler), Secrets, ConfigMaps, PVCs/PVs, owners of kept state, NetworkPolicies
and Namespaces. Writes: the
Node, its Lease, ``pods/binding``, ``pods/status``, the final Pod DELETE
(``gracePeriodSeconds=0``), Events. Runs Pods only through
``turbok.runtime.cri.PodRuntime``.

Imports: ``turbok.api``, ``turbok.runtime`` (the ``PodRuntime`` contract and
its errors), ``turbok.errors``/``home``/``settings``; never
``turbok.controllers``, ``turbok.apiserver``, ``turbok.store``,
``turbok.embedded`` or ``turbok.sandboxd`` (import-linter contract in
pyproject.toml). See docs/node.md.
"""
