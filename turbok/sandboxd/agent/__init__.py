"""The sandboxd agent: the runtime API a sandbox answers from inside, when its image brings none.

turbok places it in the Sandbox's container (read-only, at ``/.turbok/agent``,
run by the built-in base image's Python mounted at ``/.turbok/base`` through its
own dynamic loader, so it needs nothing from the image; see
``turbok.sandboxd.injection``) and starts it with the container's user, env and
root filesystem. It serves, on every port it listens on (the first bytes of a
connection say which protocol):

- upstream's sandboxd API (KEP-539.2, ``packages/sandboxd/spec``): the gRPC
  ``process.v1.ProcessService`` (Start with streamed output, Execute, WriteStdin,
  SendSignal, ResizeTTY; PTYs) over HTTP/2 (``grpcserver``, ``proto``), and the
  REST filesystem API under ``/v1`` (files: GET/HEAD/PUT/DELETE, atomic writes,
  recursive delete; health; metadata) (``rest``);
- the legacy python-runtime protocol (``/``, ``/execute``, ``/upload``,
  ``/download/P``, ``/list/P``, ``/exists/P``) (``rest``);
- ``POST /turbok/v1/spawn``, how turbok's router runs a command and relays its
  output under its own bounds (``rest``, ``procs``).

Ports: 8080 (REST) and 9090 (gRPC) as upstream's sandboxd, unless the Pod
declares them for its own app, and always the private ``AGENT_PORT``, which the
router uses. Files are confined to the root directory (``paths``), as upstream's
``pathutil``; the sandbox is the security boundary, so a symlink here can only
ever lead to the sandbox's own files.

Written for the base image's Python 3.11 standard library alone (``h2`` is
imported only for gRPC, from the agent's own read-only directory); every module
imports only its siblings, so the package runs as ``tkagent`` inside a sandbox
and as ``turbok.sandboxd.agent`` in tests. It never closes a connection first
(a TCP connection closed inside a gVisor sandbox in the last 60 s stops it from
being hibernated): the peer does, and turbok's router does it with a reset.
"""

__all__ = ["AGENT_PORT", "GRPC_PORT", "READY", "REST_PORT"]

#: The port the router reaches every agent on (besides the public 8080 and 9090).
AGENT_PORT = 48888
#: Upstream sandboxd's ports.
REST_PORT = 8080
GRPC_PORT = 9090
#: What the agent prints on stdout once it listens (its starter waits for this line).
READY = "sandboxd agent ready"
