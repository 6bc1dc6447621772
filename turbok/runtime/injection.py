"""What the runtime adds to a Pod's container besides its image: a program it starts inside (the sandboxd agent).

The composition root hands the pod runtime an ``Injection`` (``make_pod_runtime(...,
injection=...)``; turbok's is ``turbok.sandboxd.injection.agent_injection``). For the
container a Pod names in ``PodSandboxConfig.agent_container``, the runtime then

1. adds ``mounts`` (read-only binds of host directories) to the container's mounts;
2. execs ``argv(root, ports)`` in it (the container's user, env and root
   filesystem; ``root`` is the container's work directory, ``ports`` the Pod's
   ``agent_ports``) and reads its stdout until ``ready`` (the program detaches
   and serves); the exec's end is the program's start. That happens once the
   container runs, or with ``PodSandboxConfig.agent_on_demand`` (the default)
   on the first ``PodRuntime.ensure_agent``: whoever connects to the program
   asks for it first when nothing answers on ``port``.

A program that does not become ready within ``timeout`` seconds is a note on the
container's status (the node makes it a Warning Event), never a failed container.
The runtime knows nothing else of it: ``turbok.runtime`` never imports ``turbok.sandboxd``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Injection"]


@dataclass(frozen=True)
class Injection:
    #: Read-only binds: (host directory, path inside the container).
    mounts: Sequence[tuple[Path, str]]
    #: The command to exec, given the container's work directory and the ports to listen on.
    argv: Callable[[str, Sequence[int]], list[str]]
    #: The line the program prints on stdout once it serves.
    ready: bytes
    #: The pod-network port the program always serves: something answering there means it runs.
    port: int | None = None
    timeout: float = 20.0
