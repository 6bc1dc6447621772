"""The Kubernetes-compatible HTTP API of the embedded control plane.

Owns: the aiohttp application and its middlewares (``app``: bearer-token auth,
errors as ``Status``, metrics), discovery documents (``discovery``), OpenAPI
v2/v3 (``openapi``; v2 also as the protobuf kubectl downloads, ``openapi_pb``),
resource handlers for CRUD, list, watch, patch and the status and scale
subresources (``resources``), the read-only CustomResourceDefinitions
(``crds``), protobuf request bodies (``protobuf``), server-side tables for
``kubectl get`` (``table``, with the JSONPath subset printer columns use), the
serving certificate (``certs``), kubeconfig writing (``kubeconfig``), the
request bounds (``limits``: body size, nesting) and per-client in-flight limits
(``flowcontrol``, a small API Priority and Fairness), and the Pod streams
(``streaming``: logs, exec, attach, port-forward, handed to the node through the
``PodStreams`` protocol; ``streaming_exec``, ``streaming_portforward``, and the
wire protocols ``streaming_channels`` (channel.k8s.io) and ``streaming_spdy``).
What it serves, its limits and how it differs from kube-apiserver: docs/api.md.

Speaks HTTP over ``turbok.store.registry``; knows nothing of controllers,
the node or runtimes. Listens on 127.0.0.1 by default.
"""
