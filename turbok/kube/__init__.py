"""The Kubernetes engine: turbok's controllers as an operator on a real cluster (docs/kube.md).

``client`` (the controllers' ``Client`` over the REST API, with informer caches), ``informer`` (list and
watch of one kind), ``leader`` (Lease-based leader election), ``operator`` (``turbok operator``),
``router`` (the router on a cluster: ``X-Sandbox-ID`` to the Pod's IP), ``manifests`` (what ``deploy/``
holds, generated from the models).
"""
