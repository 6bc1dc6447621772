"""``workload_sandboxing`` (v1.37 draft, KAR-0020): sandboxed workloads do not run on the host kernel.

The observable this check uses is the kernel identity: ``uname -r`` and
``/proc/version`` inside the sandbox must differ from the host's. gVisor
answers with its own (``4.4.0``), Kata and other microVMs with the guest
kernel; runc, or a bubblewrap fallback, shows the host's.

On Kubernetes: pick a sandboxing RuntimeClass (``--sandbox-runtime-class``,
or one whose name or handler says gvisor/runsc/kata/...), run a pod with it
that prints both, read them from the pod log and compare with the node's
``status.nodeInfo.kernelVersion``. No such RuntimeClass: Skipped.

On turbok's embedded control plane (``agents.x-k8s.io`` served, no core
Pods): create a Sandbox of the built-in ``python-runtime-sandbox`` image,
wait for Ready, run the same commands through turbok's router
(``POST {router}/execute`` with ``X-Sandbox-ID``/``X-Sandbox-Namespace``), and
compare with this machine's kernel (the API must be on loopback, so the host
is this machine).
"""

from __future__ import annotations

import ipaddress
import os
import re
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

__all__ = ["SANDBOX_HINTS", "WorkloadSandboxing", "kernel_identity"]

SANDBOX_HINTS = ("gvisor", "runsc", "kata", "sandbox", "quark", "krun", "firecracker", "cloud-hypervisor", "clh")
SCRIPT = "echo \"RELEASE=$(uname -r)\"; echo \"VERSION=$(cat /proc/version)\""
ROUTER_COMMAND = "uname -r; cat /proc/version"


def kernel_identity(text: str) -> tuple[str, str]:
    """(release, /proc/version) from the probe's output: ``RELEASE=``/``VERSION=`` lines or two plain lines."""
    tagged = dict(re.findall(r"^(RELEASE|VERSION)=(.*)$", text, re.M))
    if tagged:
        return tagged.get("RELEASE", "").strip(), tagged.get("VERSION", "").strip()
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


@register
class WorkloadSandboxing(Check):
    id = "workload_sandboxing"
    plan = (
        "Kubernetes: run a pod with a sandboxing RuntimeClass (gvisor, kata...) printing uname -r and "
        "/proc/version and require them to differ from the node's kernel. turbok: create a Sandbox, wait for "
        "Ready, run the same through the router and require them to differ from the host's kernel."
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
        spec = {"runtimeClassName": runtime_class, "containers": [container("probe", ctx.options.image, SCRIPT)]}
        run = run_pod(ctx, {"metadata": {"name": ctx.name("probe")}, "spec": spec})
        if not run.succeeded:
            return failed(f"a pod with RuntimeClass {runtime_class} did not run: {pod_problem(run.pod)}")
        release, version = kernel_identity(run.logs.get("probe", ""))
        if not release:
            return unknown("the sandboxed pod printed no kernel release")
        node_name = (run.pod.get("spec") or {}).get("nodeName", "")
        node = ctx.client.get_or_none("v1", "Node", node_name) if node_name else None
        host = ((node or {}).get("status") or {}).get("nodeInfo", {}).get("kernelVersion", "")
        if not host:
            return unknown(f"cannot read the kernel version of node {node_name or '?'}")
        return self._judge(release, version, host, "", f"RuntimeClass {runtime_class} on node {node_name}")

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
        if not _is_loopback(ctx.client.config.server):
            return unknown(f"cannot learn the host kernel of a remote turbok at {ctx.client.config.server}")
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
        ctx.step(f"Sandbox {name} is Ready; running `{ROUTER_COMMAND}` through {router}")
        result = self._execute(ctx, router, name)
        if result.get("exit_code") != 0 or result.get("timed_out"):
            return failed(f"`{ROUTER_COMMAND}` failed in the sandbox: exit {result.get('exit_code')}, {result.get('stderr', '')!r}")
        ctx.artifact(f"output of `{ROUTER_COMMAND}` in Sandbox {name}", str(result.get("stdout", "")))
        release, proc_version = kernel_identity(str(result.get("stdout", "")))
        try:
            host_version = Path("/proc/version").read_text().strip()
        except OSError:
            host_version = ""
        return self._judge(release, proc_version, os.uname().release, host_version, f"turbok Sandbox {name}")

    @staticmethod
    def _execute(ctx: CheckContext, router: str, name: str) -> dict[str, Any]:
        headers = {"X-Sandbox-ID": name, "X-Sandbox-Namespace": ctx.namespace}
        token = ctx.client.config.router_token  # the router's own token, not the API's
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            resp = httpx.post(f"{router}/execute", json={"command": ROUTER_COMMAND, "timeout_seconds": 30}, headers=headers, timeout=60)
        except httpx.HTTPError as e:
            raise unknown(f"the sandbox router at {router} did not answer: {e}") from e
        if resp.status_code >= 400:
            raise unknown(f"the sandbox router refused the command: {resp.status_code} {resp.text[:200]}")
        try:
            data = resp.json()
        except ValueError as e:
            raise unknown("the sandbox router answered with something that is not JSON") from e
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _judge(release: str, version: str, host_release: str, host_version: str, where: str) -> Outcome:
        details = {"sandbox": {"release": release, "procVersion": version}, "host": {"release": host_release, "procVersion": host_version}}
        same_release = release == host_release
        same_version = bool(host_version) and version == host_version
        if same_release and (same_version or not host_version):
            return failed(f"{where} runs on the host kernel {host_release}: the workload is not isolated from it", **details)
        return passed(f"{where} reports kernel {release!r}, the host runs {host_release!r}: a different kernel identity", **details)
