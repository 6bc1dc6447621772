"""One level-triggered reconciler per kind, independent of the engine they run on.

Each reconciler reads desired state, observes actual state, makes one step
towards the first and writes status with conditions and reasons. They see a
``Client`` (``client``: typed access to objects, on either engine) and write
what upstream's controllers write: Pods, Services, PVCs, Endpoints and
EndpointSlices; a node runs the Pods and reports their status. They never
import the runtime, the node, the apiserver, the store, sandboxd or an engine
(import-linter contracts in pyproject.toml).

Modules: ``base`` (Result, errors, the Reconciler contract), ``manager``
(queues, workers, backoff, event routing), ``sandbox`` (a Sandbox's Pod, PVCs
and Service; its status), with ``sandboxpod`` (the Pod and PVCs a Sandbox
asks for), ``sandboxservice`` (its headless Service) and ``sandboxstatus``
(its conditions, from the Pod); ``template``, ``warmpool``, ``claim`` (with
``blueprint``: Sandboxes from a template, and ``injection``: what a claim may
add), ``endpoints`` (Endpoints and EndpointSlices of Services), ``namespace``
(each namespace's default ServiceAccount and root CA ConfigMap; emptying a
deleted one), ``quota`` (ResourceQuota status), ``garbage`` (ownerReference
garbage collection), ``events``, ``labels`` (the upstream label and
annotation keys, and turbok's few).
"""
