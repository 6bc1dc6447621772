"""``workload_sandboxing`` (v1.37, KAR-0020): a sandboxed workload is isolated from the host node.

The requirement: "strong isolation from the host node kernel ... isolate the
workload's process, memory, filesystem, and network access from the host node
and other co-located pods". The check runs one probe script (``PROBE``) inside
the sandbox and judges five things, as the upstream test plan does
(kubernetes-sigs/ai-conformance ``test/workload_sandboxing_test.go``):

* kernel: ``uname -r``, ``/proc/version`` and ``/proc/sys/kernel/random/boot_id``
  must not all match what an unsandboxed workload on the same node sees (gVisor
  answers with its own ``4.4.0`` and boot id, Kata with its guest kernel's);
* processes: no host daemon (kubelet, containerd, dockerd, crio,
  systemd-journald, turbok, runsc...) among the processes the sandbox sees;
* memory: ``/dev/mem``, ``/dev/kmem`` and ``/dev/port`` are not readable;
* filesystem: none of the node's own directories (``/etc/kubernetes``,
  ``/var/lib/kubelet``, ``/var/log/pods``, container runtimes' state) is there;
* network: no host bridge interface (``docker0``, ``cni0``, ``flannel*``...) and
  the host's loopback is not reachable (a port the host listens on, on 127.0.0.1).

Where it runs:

* Kubernetes: a pod with a sandboxing RuntimeClass (``--sandbox-runtime-class``,
  or one whose name or handler says gvisor/runsc/kata/...), then the same probe
  in an unsandboxed control pod pinned to the same node (kubelet's loopback
  healthz port 10248 stands for "the host's loopback"). No such RuntimeClass:
  Skipped. A control pod that cannot run: the node's ``kernelVersion`` is the
  reference for the kernel release only.
* turbok's embedded control plane: a Sandbox of the built-in image, the probe
  run through turbok's router, compared with this machine (the API must be on
  loopback, so the host is this machine; its API port stands for the host's
  loopback).

A probe that does not finish ends the check Unknown, as upstream asks for
sandboxes it cannot verify.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from turbok.conformance.checks.base import (
    Check,
    CheckContext,
    Outcome,
    failed,
    passed,
    register,
    skipped,
    unknown,
)
from turbok.conformance.checks.networking import condition
from turbok.conformance.checks.workloads import container, pod_problem, require_pods, run_pod

__all__ = ["HOST_DAEMONS", "HOST_PATHS", "PROBE", "SANDBOX_HINTS", "Probe", "WorkloadSandboxing", "kernel_identity",
           "parse_probe", "probe_script"]

SANDBOX_HINTS = ("gvisor", "runsc", "kata", "sandbox", "quark", "krun", "firecracker", "cloud-hypervisor", "clh")
HOST_DAEMONS = ("kubelet", "containerd", "containerd-shim", "dockerd", "crio", "systemd-journal", "turbok", "runsc",
                "runsc-sandbox")
HOST_PATHS = ("/etc/kubernetes", "/var/lib/kubelet", "/var/log/pods", "/var/lib/containerd", "/run/containerd",
              "/var/lib/docker", "/var/run/crio")
MEMORY_DEVICES = ("/dev/mem", "/dev/kmem", "/dev/port")
HOST_BRIDGES = re.compile(r"^(docker\d*|cni\d*|cbr\d*|flannel.*|br-.*|virbr\d*|bond.*|dummy.*|vxlan.*|cilium_.*|weave)$")
KUBELET_HEALTHZ_PORT = 10248
_DONE = "PROBE done"

# One POSIX sh script for busybox, dash or bash images; every line it prints is "PROBE key=value".
PROBE = r"""echo "PROBE release=$(uname -r 2>/dev/null)"
echo "PROBE version=$(cat /proc/version 2>/dev/null)"
echo "PROBE boot_id=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
pids=0; daemons=""
for d in /proc/[0-9]*; do
  [ -d "$d" ] || continue
  pids=$((pids + 1))
  comm=$(cat "$d/comm" 2>/dev/null)
  case " __DAEMONS__ " in *" $comm "*) daemons="$daemons $comm";; esac
done
echo "PROBE pids=$pids"
echo "PROBE daemons=$daemons"
memory=""
for m in __MEMORY__; do head -c 1 "$m" >/dev/null 2>&1 && memory="$memory $m"; done
echo "PROBE memory=$memory"
paths=""
for p in __PATHS__; do [ -e "$p" ] && paths="$paths $p"; done
echo "PROBE host_paths=$paths"
ifaces=""
if [ -r /proc/net/dev ]; then ifaces=$(awk -F: 'NR > 2 { gsub(/ /, "", $1); printf "%s ", $1 }' /proc/net/dev 2>/dev/null); fi
[ -z "$ifaces" ] && [ -d /sys/class/net ] && ifaces=$(ls /sys/class/net 2>/dev/null | tr '\n' ' ')
echo "PROBE interfaces=$ifaces"
loopback=unknown
if command -v python3 >/dev/null 2>&1; then
  python3 -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(('127.0.0.1', __PORT__)) == 0 else 1)" && loopback=open || loopback=closed
elif command -v nc >/dev/null 2>&1; then
  nc -w 1 127.0.0.1 __PORT__ </dev/null >/dev/null 2>&1 && loopback=open || loopback=closed
fi
echo "PROBE loopback_port=__PORT__ $loopback"
echo "PROBE done"
"""


def probe_script(port: int) -> str:
    """The probe, checking ``port`` on 127.0.0.1 as "the host's loopback"."""
    return (PROBE.replace("__DAEMONS__", " ".join(HOST_DAEMONS)).replace("__MEMORY__", " ".join(MEMORY_DEVICES))
            .replace("__PATHS__", " ".join(HOST_PATHS)).replace("__PORT__", str(port)))


@dataclass
class Probe:
    """What the probe printed; ``done`` is False when it did not finish."""

    release: str = ""
    version: str = ""
    boot_id: str = ""
    pids: int = 0
    daemons: list[str] = field(default_factory=list)
    memory: list[str] = field(default_factory=list)
    host_paths: list[str] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)
    loopback: str = "unknown"  # open, closed, unknown
    done: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"release": self.release, "procVersion": self.version, "bootId": self.boot_id, "pids": self.pids,
                "hostDaemons": self.daemons, "memoryDevices": self.memory, "hostPaths": self.host_paths,
                "interfaces": self.interfaces, "hostLoopback": self.loopback}


def parse_probe(text: str) -> Probe:
    p = Probe()
    for line in text.splitlines():
        if not line.startswith("PROBE "):
            continue
        if line.strip() == _DONE:
            p.done = True
            continue
        key, _, value = line[len("PROBE "):].partition("=")
        value = value.strip()
        if key == "release":
            p.release = value
        elif key == "version":
            p.version = value
        elif key == "boot_id":
            p.boot_id = value
        elif key == "pids":
            p.pids = int(value) if value.isdigit() else 0
        elif key == "daemons":
            p.daemons = value.split()
        elif key == "memory":
            p.memory = value.split()
        elif key == "host_paths":
            p.host_paths = value.split()
        elif key == "interfaces":
            p.interfaces = value.split()
        elif key == "loopback_port":
            p.loopback = value.rsplit(" ", 1)[-1]
    return p


def kernel_identity(text: str) -> tuple[str, str]:
    """(release, /proc/version) from probe output, or from two plain lines (``uname -r; cat /proc/version``)."""
    p = parse_probe(text)
    if p.release or p.version:
        return p.release, p.version
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else ""), (lines[1] if len(lines) > 1 else "")


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def host_probe() -> Probe:
    """This machine, as the probe would see it from outside any sandbox (for turbok's engine)."""
    ifaces = [ln.split(":", 1)[0].strip() for ln in _read("/proc/net/dev").splitlines()[2:] if ":" in ln]
    return Probe(release=os.uname().release, version=_read("/proc/version"),
                 boot_id=_read("/proc/sys/kernel/random/boot_id"), interfaces=ifaces, done=True)


def judge(sandbox: Probe, reference: Probe, where: str, *, reference_name: str) -> Outcome:
    """The five verdicts; Passed only when every one holds."""
    details = {"sandbox": sandbox.to_dict(), reference_name: reference.to_dict()}
    if not sandbox.done:
        return unknown(f"the probe in {where} did not finish: the sandbox cannot be verified automatically "
                       "(attest it by hand)", **details)
    compared = [(name, a, b) for name, a, b in (("release", sandbox.release, reference.release),
                                                ("/proc/version", sandbox.version, reference.version),
                                                ("boot id", sandbox.boot_id, reference.boot_id)) if a and b]
    differ = [name for name, a, b in compared if a != b]
    problems: list[str] = []
    verdicts: dict[str, str] = {}
    if not compared:
        return unknown(f"{where} reported no kernel identity to compare", **details)
    if differ:
        verdicts["kernel"] = f"differs from the {reference_name} in {', '.join(differ)}"
    else:
        verdicts["kernel"] = f"same as the {reference_name}"
        problems.append(f"it runs on the {reference_name}'s kernel {reference.release} (same {', '.join(n for n, _, _ in compared)})")
    if sandbox.daemons:
        problems.append(f"it sees host processes ({', '.join(sorted(set(sandbox.daemons)))})")
    verdicts["processes"] = f"{sandbox.pids} process(es) visible" + (f", host daemons {sandbox.daemons}" if sandbox.daemons else "")
    if sandbox.memory:
        problems.append(f"it can read {', '.join(sandbox.memory)}")
    verdicts["memory"] = "readable: " + ", ".join(sandbox.memory) if sandbox.memory else "no raw memory device readable"
    if sandbox.host_paths:
        problems.append(f"host paths are mounted ({', '.join(sandbox.host_paths)})")
    verdicts["filesystem"] = ("host paths: " + ", ".join(sandbox.host_paths)) if sandbox.host_paths else "no host path"
    bridges = [i for i in sandbox.interfaces if HOST_BRIDGES.match(i)]
    if bridges:
        problems.append(f"it sees host network interfaces ({', '.join(bridges)})")
    if sandbox.loopback == "open":
        problems.append("it reaches a port the host listens on at 127.0.0.1")
    verdicts["network"] = (f"interfaces {' '.join(sandbox.interfaces) or 'none'}; host loopback {sandbox.loopback}")
    details["verdicts"] = verdicts
    if problems:
        return failed(f"{where} is not isolated from the host: {'; '.join(problems)}", **details)
    return passed(f"{where} reports kernel {sandbox.release!r} ({verdicts['kernel']}); no host processes, memory "
                  f"devices, host paths or host network in reach", **details)


@register
class WorkloadSandboxing(Check):
    id = "workload_sandboxing"
    plan = (
        "Kubernetes: run a probe in a pod with a sandboxing RuntimeClass (gvisor, kata...) and in an unsandboxed pod "
        "on the same node; the sandbox must show another kernel identity (release, /proc/version, boot id), no host "
        "processes, no readable /dev/mem, /dev/kmem or /dev/port, no host paths, no host bridges and no reach to the "
        "host's loopback. turbok: the same probe in a Sandbox, through the router, compared with this machine."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        if ctx.engine == "turbok":
            return self._turbok(ctx)
        return self._kubernetes(ctx)

    # -- a real cluster ---------------------------------------------------------------------

    def _kubernetes(self, ctx: CheckContext) -> Outcome:
        require_pods(ctx)
        runtime_class = self._runtime_class(ctx)
        ctx.step(f"RuntimeClass {runtime_class}")
        script = probe_script(KUBELET_HEALTHZ_PORT)
        spec = {"runtimeClassName": runtime_class, "containers": [container("probe", ctx.options.image, script)]}
        run = run_pod(ctx, {"metadata": {"name": ctx.name("probe")}, "spec": spec})
        if not run.succeeded:
            return failed(f"a pod with RuntimeClass {runtime_class} did not run: {pod_problem(run.pod)}")
        sandbox = parse_probe(run.logs.get("probe", ""))
        node_name = (run.pod.get("spec") or {}).get("nodeName", "")
        where = f"RuntimeClass {runtime_class} on node {node_name}"
        ctx.step(f"unsandboxed control pod on node {node_name}, for comparison")
        control_spec = {"nodeName": node_name, "containers": [container("probe", ctx.options.image, script)]}
        control_run = run_pod(ctx, {"metadata": {"name": ctx.name("control")}, "spec": control_spec})
        control = parse_probe(control_run.logs.get("probe", "")) if control_run.succeeded else Probe()
        if not control.done:
            node = ctx.client.get_or_none("v1", "Node", node_name) if node_name else None
            kernel = ((node or {}).get("status") or {}).get("nodeInfo", {}).get("kernelVersion", "")
            if not kernel:
                return unknown(f"no unsandboxed control pod ran on node {node_name or '?'} "
                               f"({pod_problem(control_run.pod)}) and its kernel version is unknown")
            ctx.step(f"the control pod did not run ({pod_problem(control_run.pod)}): comparing with the node's "
                     f"kernelVersion {kernel}")
            control = Probe(release=kernel, done=True)
        return judge(sandbox, control, where, reference_name="host")

    def _runtime_class(self, ctx: CheckContext) -> str:
        wanted = ctx.options.sandbox_runtime_class
        classes = []
        if ctx.client.discovery.has_resource("node.k8s.io", "runtimeclasses", "v1"):
            classes = ctx.client.list("node.k8s.io/v1", "RuntimeClass")
        if wanted:
            if not any(c["metadata"]["name"] == wanted for c in classes):
                raise failed(f"RuntimeClass {wanted!r} (from --sandbox-runtime-class) does not exist")
            return wanted
        for rc in classes:
            words = f"{rc['metadata']['name']} {rc.get('handler', '')}".lower()
            if any(h in words for h in SANDBOX_HINTS):
                return str(rc["metadata"]["name"])
        listed = ", ".join(c["metadata"]["name"] for c in classes) or "none"
        raise skipped(f"no sandbox RuntimeClass (gvisor, kata...) found (RuntimeClasses: {listed}); "
                      "pass --sandbox-runtime-class for another name")

    # -- turbok's embedded control plane ----------------------------------------------------

    def _turbok(self, ctx: CheckContext) -> Outcome:
        router = ctx.client.config.router_url
        if not router:
            return unknown("turbok control plane detected, but the kubeconfig publishes no turbok.dev/router extension")
        server = ctx.client.config.server
        if not _is_loopback(server):
            return unknown(f"cannot learn the host kernel of a remote turbok at {server}")
        version = ctx.client.discovery.preferred_version("agents.x-k8s.io", ("v1beta1", "v1alpha1")) or "v1beta1"
        api = f"agents.x-k8s.io/{version}"
        name = ctx.name("sandbox")
        ctx.create({"apiVersion": api, "kind": "Sandbox", "metadata": {"name": name},
                    "spec": {"podTemplate": {"spec": {"containers": [{"name": "sandbox", "image": ctx.options.sandbox_image}]}}}})

        def ready() -> dict[str, Any] | None:
            sb = ctx.client.get(api, "Sandbox", name, ctx.namespace)
            return sb if (condition(sb, "Ready") or {}).get("status") == "True" else None

        if ctx.wait_for(ready, what=f"Sandbox {name} to be Ready") is None:
            sb = ctx.client.get_or_none(api, "Sandbox", name, ctx.namespace) or {}
            return failed(f"Sandbox {name} did not become Ready: {condition(sb, 'Ready') or 'no Ready condition'}")
        # the API server listens on the host's loopback: from inside, that port must be someone else's or no one's
        port = urlparse(server).port or 443
        ctx.step(f"Sandbox {name} is Ready; running the isolation probe through {router}")
        result = self._execute(ctx, router, name, probe_script(port))
        output = str(result.get("stdout", ""))
        ctx.artifact(f"isolation probe in Sandbox {name}", output)
        if result.get("timed_out") or (result.get("exit_code") != 0 and _DONE not in output):
            return failed(f"the probe failed in the sandbox: exit {result.get('exit_code')}, {result.get('stderr', '')!r}")
        return judge(parse_probe(output), host_probe(), f"turbok Sandbox {name}", reference_name="host")

    @staticmethod
    def _execute(ctx: CheckContext, router: str, name: str, command: str) -> dict[str, Any]:
        headers = {"X-Sandbox-ID": name, "X-Sandbox-Namespace": ctx.namespace}
        token = ctx.client.config.router_token  # the router's own token, not the API's
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            resp = httpx.post(f"{router}/execute", json={"command": command, "timeout_seconds": 60}, headers=headers,
                              timeout=90)
        except httpx.HTTPError as e:
            raise unknown(f"the sandbox router at {router} did not answer: {e}") from e
        if resp.status_code >= 400:
            raise unknown(f"the sandbox router refused the command: {resp.status_code} {resp.text[:200]}")
        try:
            data = resp.json()
        except ValueError as e:
            raise unknown("the sandbox router answered with something that is not JSON") from e
        return data if isinstance(data, dict) else {}
