"""The Kubernetes-compatible HTTP API of the embedded control plane.

Owns: the aiohttp application and its middlewares (``app``: bearer-token auth,
errors as ``Status``), discovery documents (``discovery``), OpenAPI v2/v3
(``openapi``), resource handlers for CRUD, list, watch, patch and the status
and scale subresources (``resources``), server-side tables for ``kubectl get``
(``table``, with the JSONPath subset printer columns use), and kubeconfig
writing (``kubeconfig``).

Speaks HTTP over ``turbok.store.registry``; knows nothing of controllers or
runtimes. Listens on 127.0.0.1 by default.
"""
