"""What a Pod spec asks of the runtime, and what of it this node cannot honour.

Pure helpers for the pod worker:

- ``sandbox_config(pod, id, volumes)``: the ``PodSandboxConfig`` (hostname as
  the kubelet makes it, the pod's limits where every container has one, as a
  pod cgroup has them, the pids limit from ``turbok.dev/pids-limit``, the pod
  network unless ``turbok.dev/network`` says ``none``/``loopback``, and
  ``single_container`` when at most one container runs at a time: one app
  container and no sidecar, so the runtime may run it as its sandbox's root,
  the fast path).
- ``container_config(...)``: a ``ContainerConfig`` with ``$(VAR)`` expanded in
  command and args as the kubelet expands them (``env.expand_command``).
- ``refusals(pod)``: what makes the node refuse a Pod (it is Failed with the
  reason, as kubelet admission fails a Pod): host namespaces, which a gVisor
  sandbox never shares, and a non-Linux ``spec.os``.
- ``notices(pod)``: fields honoured only in part or not at all (a Warning
  Event each, once per Pod): host ports, another runtimeClassName, resource
  claims, shareProcessNamespace, hostAliases.
- ``run_hook(...)``: a lifecycle handler (exec, httpGet, sleep) for postStart
  and preStop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from turbok.api.podtemplate import container_resources, on_pod_network, pids_limit
from turbok.api.quantity import QuantityError, cpu_millis, to_bytes
from turbok.node.client import Obj
from turbok.node.clock import Clock
from turbok.node.env import expand_command
from turbok.runtime.cri import (
    ContainerConfig,
    DNSConfig,
    Mount,
    PodRuntime,
    PodSandboxConfig,
    SecurityContext,
    VolumeConfig,
)

__all__ = ["AGENT_ANNOTATION", "agent", "background", "container_config", "notices", "refusals", "run_hook",
           "sandbox_config", "single_container"]

#: runtimeClassNames that mean "this node's sandbox runtime" (anything else is a notice).
RUNTIME_CLASSES = ("", "gvisor", "runsc", "turbok")


def _limit(container: Obj, name: str) -> Any:
    return ((container.get("resources") or {}).get("limits") or {}).get(name)


def _pod_limit(pod: Obj, name: str, parse: Any) -> int | None:
    """A pod-level limit: ``spec.resources`` (pod-level resources) if set, else the sum over app containers
    when every one of them has the limit (else none: a pod cgroup without it), at least the largest init's."""
    spec = pod.get("spec") or {}
    try:
        pod_level = ((spec.get("resources") or {}).get("limits") or {}).get(name)
        if pod_level is not None:
            return int(parse(pod_level)) or None
        apps = spec.get("containers") or []
        values = [_limit(c, name) for c in apps]
        if not apps or any(v is None for v in values):
            return None
        total = sum(int(parse(v)) for v in values)
        inits = [int(parse(v)) for c in spec.get("initContainers") or [] if (v := _limit(c, name)) is not None]
        return max(total, *inits) if inits else (total or None)
    except (QuantityError, TypeError, ValueError):
        return None


def single_container(pod: Obj) -> bool:
    """True when at most one container of ``pod`` runs at a time: one app container, init containers
    (which run one by one before it) but no sidecar (an init container with ``restartPolicy: Always``)."""
    spec = pod.get("spec") or {}
    return len(spec.get("containers") or []) == 1 and not any(
        c.get("restartPolicy") == "Always" for c in spec.get("initContainers") or [])


#: A warm pool's Pods (upstream's label): their boots wait behind the Pods someone waits for.
WARM_POOL_LABEL = "agents.x-k8s.io/warm-pool-sandbox"
#: Pod annotation: ``off`` keeps the sandboxd agent out of a Sandbox's Pod (its image serves its own API);
#: ``eager`` starts it with the container (the Pod is Ready once it serves: a client on the Pod's address, the
#: official client's ``in-cluster-pod-ip`` mode, finds it at once); otherwise it starts on the first call that
#: reaches it through turbok (the router, a port-forward to its ports: ``PodRuntime.ensure_agent``), so that
#: sandboxes nobody talks to through sandboxd (a warm pool's, idle ones) cost neither its start (an interpreter's,
#: about 0.5 s of a core under runsc's ptrace platform) nor its memory (about 15 MiB).
AGENT_ANNOTATION = "turbok.dev/sandboxd"
#: Upstream sandboxd's REST and gRPC ports, which the agent serves unless a container declares them.
AGENT_PUBLIC_PORTS = (8080, 9090)


def agent(pod: Obj) -> dict[str, Any]:
    """Where the runtime puts the sandboxd agent (``PodSandboxConfig.agent_container``/``agent_ports``): the first
    container of a Sandbox's Pod (``turbok.dev/sandbox-identity``), unless ``turbok.dev/sandboxd: off``; on
    8080 and 9090 unless a container of the Pod declares them (its own server's); on demand (``AGENT_ANNOTATION``)."""
    annotations = pod["metadata"].get("annotations") or {}
    containers = (pod.get("spec") or {}).get("containers") or []
    if "turbok.dev/sandbox-identity" not in annotations or annotations.get(AGENT_ANNOTATION) == "off" \
            or not containers:
        return {}
    declared = {p.get("containerPort") for c in containers for p in c.get("ports") or []}
    return {"agent_container": str(containers[0]["name"]),
            "agent_ports": tuple(p for p in AGENT_PUBLIC_PORTS if p not in declared),
            "agent_on_demand": annotations.get(AGENT_ANNOTATION) != "eager"}


def background(pod: Obj) -> bool:
    """Nobody waits for this Pod yet: a warm pool's (its label goes when a claim takes it)."""
    return WARM_POOL_LABEL in (pod["metadata"].get("labels") or {})


def sandbox_config(pod: Obj, id: str, volumes: Sequence[VolumeConfig], *,
                   dns: DNSConfig | None = None) -> PodSandboxConfig:
    md, spec = pod["metadata"], pod.get("spec") or {}
    annotations = dict(md.get("annotations") or {})
    hostname = str(spec.get("hostname") or md["name"])[:63].rstrip("-.") or "pod"
    storage: list[int] = []
    with contextlib.suppress(QuantityError, TypeError, ValueError):
        storage = [to_bytes(v) for c in spec.get("containers") or []
                   if (v := _limit(c, "ephemeral-storage")) is not None]
    network = on_pod_network(annotations)
    return PodSandboxConfig(
        id=id, name=md["name"], namespace=md.get("namespace", ""), uid=md["uid"], hostname=hostname,
        volumes=tuple(volumes),
        cpu_millis=_pod_limit(pod, "cpu", cpu_millis),
        memory_bytes=_pod_limit(pod, "memory", to_bytes),
        pids_limit=pids_limit(pod),
        ephemeral_storage_bytes=sum(storage) if storage else None,
        network=network,
        labels=dict(md.get("labels") or {}),
        annotations=annotations,
        single_container=single_container(pod),
        **agent(pod),
        dns=dns if network else None,
        background=background(pod),
    )


def container_config(container: Obj, *, env: Mapping[str, str], mounts: Sequence[Mount],
                     security: SecurityContext, attempt: int, background: bool = False) -> ContainerConfig:
    res = container_resources(container)
    cpu = res.limits.get("cpu")
    memory = res.limits.get("memory")
    return ContainerConfig(
        name=container["name"],
        image=container.get("image", ""),
        command=tuple(expand_command([str(a) for a in container.get("command") or ()], env)),
        args=tuple(expand_command([str(a) for a in container.get("args") or ()], env)),
        env=dict(env),
        working_dir=container.get("workingDir") or None,
        mounts=tuple(mounts),
        security=security,
        cpu_millis=int((cpu * 1000).to_integral_value(rounding="ROUND_CEILING")) if cpu else None,
        memory_bytes=int(memory) if memory else None,
        stdin=bool(container.get("stdin")),
        stdin_once=bool(container.get("stdinOnce")),
        tty=bool(container.get("tty")),
        attempt=attempt,
        background=background,
    )


def refusals(pod: Obj) -> tuple[str, str] | None:
    """(reason, message) when this node must not run ``pod`` at all, else None."""
    spec = pod.get("spec") or {}
    shared = [f for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f)]
    if shared:
        return ("UnexpectedAdmissionError",
                f"Pod was rejected: {', '.join(shared)} cannot be honoured: every Pod on this node runs in its own "
                "gVisor sandbox and never shares the host's namespaces")
    os_name = (spec.get("os") or {}).get("name")
    if os_name and os_name != "linux":
        return ("PodOSNotSupported", "Pod was rejected: Failed to admit pod as the OS field doesn't match node OS")
    return None


def notices(pod: Obj, *, dra: bool = False) -> list[tuple[str, str]]:
    """(reason, message) for each field of ``pod`` this node honours only in part (``dra``: the node serves
    dynamic resource allocation, so resource claims are honoured)."""
    spec = pod.get("spec") or {}
    out: list[tuple[str, str]] = []
    rc = spec.get("runtimeClassName") or ""
    if rc not in RUNTIME_CLASSES:
        out.append(("RuntimeClassIgnored", f"runtimeClassName {rc!r} is not known here: the Pod runs in a gVisor "
                    "sandbox, as every Pod on this node"))
    for key in ("initContainers", "containers"):
        for c in spec.get(key) or []:
            for port in c.get("ports") or []:
                if port.get("hostPort"):
                    out.append(("HostPortIgnored", f"container {c.get('name')}: hostPort {port['hostPort']} is not "
                                "opened on the host; reach the port with kubectl port-forward"))
            if (c.get("resources") or {}).get("claims") and not dra:
                out.append(("ResourceClaimsIgnored", f"container {c.get('name')}: resources.claims (dynamic "
                            "resource allocation) are not supported on this node"))
    if spec.get("shareProcessNamespace"):
        out.append(("ShareProcessNamespaceIgnored", "shareProcessNamespace is not honoured: each container has "
                    "its own process namespace inside the pod's sandbox"))
    if spec.get("hostAliases"):
        out.append(("HostAliasesIgnored", "hostAliases are not written to the containers' /etc/hosts"))
    if spec.get("resourceClaims") and not dra:
        out.append(("ResourceClaimsIgnored", "spec.resourceClaims (dynamic resource allocation) are not supported "
                    "on this node"))
    return out


def _port(container: Obj, port: Any) -> int | None:
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p.get("containerPort", 0)) or None
    return None


async def run_hook(runtime: PodRuntime, id: str, container: Obj, handler: Obj, *, pod_ip: str, clock: Clock,
                   timeout: float) -> str | None:
    """Run a lifecycle handler of ``container``; None when it succeeded, else why it failed."""
    try:
        async with asyncio.timeout(max(timeout, 0.001)):
            if "exec" in handler:
                argv = [str(a) for a in (handler["exec"] or {}).get("command") or []]
                stream = await runtime.exec(id, container["name"], argv)
                code = await stream.process.wait()
                with contextlib.suppress(Exception):
                    await stream.process.stdout.read()
                return None if code == 0 else f"command {argv!r} exited with {code}"
            if "httpGet" in handler:
                return await _http_hook(container, handler["httpGet"] or {}, pod_ip)
            if "sleep" in handler:
                await clock.sleep(float((handler["sleep"] or {}).get("seconds", 0)))
                return None
            return "the handler names no action this node supports (exec, httpGet, sleep)"
    except TimeoutError:
        return f"the hook did not finish within {timeout:g}s"
    except Exception as e:  # a hook never breaks the worker: its failure is reported
        return f"{type(e).__name__}: {e}"


async def _http_hook(container: Obj, get: Obj, pod_ip: str) -> str | None:
    host = get.get("host") or pod_ip or "127.0.0.1"
    port = _port(container, get.get("port"))
    if port is None:
        return f"unknown port {get.get('port')!r}"
    path = str(get.get("path") or "/")
    if not path.startswith("/"):
        path = "/" + path
    headers = "".join(f"{h.get('name')}: {h.get('value')}\r\n" for h in get.get("httpHeaders") or [])
    reader, writer = await asyncio.open_connection(host, port, ssl=(get.get("scheme") == "HTTPS") or None)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-lifecycle/1.37\r\n"
                     f"{headers}Connection: close\r\n\r\n".encode())
        await writer.drain()
        line = (await reader.readline()).decode(errors="replace").split()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    code = int(line[1]) if len(line) > 1 and line[1].isdigit() else 0
    return None if 200 <= code < 400 else f"HTTP lifecycle hook ({path}) for Container \"{container['name']}\" " \
                                          f"failed - error: status code {code}"
