"""Metrics: ``accelerator_metrics`` (per-device telemetry) and ``ai_service_metrics`` (workload metrics collected).

Both read in-cluster HTTP endpoints through the API server's service proxy
(``/api/v1/namespaces/NS/services/NAME:PORT/proxy/PATH``), so they run from a
laptop with nothing but a kubeconfig.

accelerator_metrics (KAR-0059): find the accelerator metrics exporter
(NVIDIA DCGM exporter, AMD device metrics exporter, ... or ``--metrics-endpoint``),
scrape it, require the Prometheus text format and, per device (samples with a
device label such as ``gpu``/``UUID``/``device``), utilization and memory
usage; temperature, power and interconnect metrics are reported when present.

ai_service_metrics (KAR-0061): deploy a pod that serves a counter with a
value unique to the run, ask the monitoring system to scrape it (PodMonitor,
PodMonitoring, ``prometheus.io`` annotations) and require Prometheus (found,
or ``--prometheus``) to return that value from its query API.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from turbok.conformance.checks.base import Check, CheckContext, Outcome, failed, passed, register, unknown
from turbok.conformance.checks.workloads import (
    ask_to_scrape,
    metrics_endpoint_objects,
    parse_metrics,
    pod_problem,
    require_accelerators,
    require_pods,
)
from turbok.conformance.errors import ApiError, ClusterError, InvalidOptionError

__all__ = ["AcceleratorMetrics", "AiServiceMetrics", "Endpoint", "classify_metrics"]

_EXPORTER_HINTS = ("dcgm-exporter", "dcgm", "device-metrics-exporter", "amd-metrics", "xpumanager", "neuron-monitor",
                   "tpu-metrics", "gpu-metrics", "accelerator-metrics")
_UTIL = re.compile(r"GPU_UTIL|GR_ENGINE_ACTIVE|util|activity|duty_cycle|busy", re.I)
_MEMORY = re.compile(r"FB_USED|vram.*used|used.*vram|mem(ory)?_used|memory_usage|hbm.*used|used.*hbm", re.I)
_OPTIONAL = {"temperature": re.compile(r"temp", re.I), "power": re.compile(r"power", re.I),
             "interconnect": re.compile(r"nvlink|xgmi|pcie|interconnect|\bici\b", re.I)}
_DEVICE_LABELS = {"gpu", "uuid", "device", "gpu_id", "minor_number", "pci_bus_id", "card", "gpu_uuid", "neuroncore",
                  "neuron_device", "accelerator_id", "tpu", "accelerator", "gpu_index"}


class Endpoint:
    """``[scheme:]NAMESPACE/SERVICE:PORT[/PATH]`` as given on the command line."""

    def __init__(self, text: str, default_path: str) -> None:
        m = re.fullmatch(r"(?:(https?):)?([^/:]+)/([^/:]+):([^/]+)(/.*)?", text)
        if not m:
            raise InvalidOptionError(f"{text!r} is not NAMESPACE/SERVICE:PORT[/PATH]")
        self.scheme, self.namespace, self.service, self.port = m.group(1) or "", m.group(2), m.group(3), m.group(4)
        self.path = m.group(5) or default_path

    def __str__(self) -> str:
        return f"{self.namespace}/{self.service}:{self.port}{self.path}"

    def get(self, ctx: CheckContext, params: dict[str, Any] | None = None) -> str:
        return ctx.client.service_proxy(self.namespace, self.service, self.port, self.path, params, scheme=self.scheme)


def _find_service(ctx: CheckContext, hints: tuple[str, ...], avoid: tuple[str, ...] = (), port: int | None = None) -> Endpoint | None:
    services = ctx.client.list("v1", "Service")
    for hint in hints:
        for svc in services:
            name = svc["metadata"]["name"]
            if hint not in name or any(a in name for a in avoid):
                continue
            ports = (svc.get("spec") or {}).get("ports") or []
            chosen = next((p for p in ports if port is not None and p.get("port") == port), None)
            chosen = chosen or next((p for p in ports if "metric" in str(p.get("name", ""))), None) or (ports[0] if ports else None)
            if chosen:
                return Endpoint(f"{svc['metadata']['namespace']}/{name}:{chosen['port']}", "/metrics")
    return None


def classify_metrics(samples: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, Any]:
    """Which sample names carry per-device utilization, memory and optional metrics, and which devices."""
    found: dict[str, Any] = {"utilization": [], "memory": [], "devices": set(), **{k: [] for k in _OPTIONAL}}
    for name, items in samples.items():
        per_device = [labels for labels, _ in items if {k.lower() for k in labels} & _DEVICE_LABELS]
        if not per_device:
            continue
        if _MEMORY.search(name):
            found["memory"].append(name)
        elif _UTIL.search(name):
            found["utilization"].append(name)
        for key, pattern in _OPTIONAL.items():
            if pattern.search(name):
                found[key].append(name)
        for labels in per_device:
            ident = next((v for k, v in labels.items() if k.lower() in ("uuid", "gpu_uuid")), None)
            ident = ident or next(v for k, v in labels.items() if k.lower() in _DEVICE_LABELS)
            if _UTIL.search(name) or _MEMORY.search(name):
                found["devices"].add(f"{labels.get('Hostname', labels.get('node', ''))}/{ident}")
    found["devices"] = sorted(found["devices"])
    return found


@register
class AcceleratorMetrics(Check):
    id = "accelerator_metrics"
    plan = (
        "Find the accelerator metrics exporter (DCGM exporter and others, or --metrics-endpoint), scrape it "
        "through the API server's service proxy, require Prometheus text format with per-device utilization "
        "and memory usage metrics (device labels), and report temperature, power and interconnect metrics."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        acc = require_accelerators(ctx)
        if ctx.options.metrics_endpoint:
            endpoint = Endpoint(ctx.options.metrics_endpoint, "/metrics")
        else:
            found = _find_service(ctx, _EXPORTER_HINTS, port=9400)
            if found is None:
                if acc.vendor is None:
                    return unknown("unrecognised accelerators and no known metrics exporter: pass --metrics-endpoint NS/SERVICE:PORT")
                return failed("no accelerator metrics endpoint found (looked for DCGM and other exporters' Services): "
                              "install one or pass --metrics-endpoint NS/SERVICE:PORT")
            endpoint = found
        ctx.step(f"scraping {endpoint}")
        try:
            text = endpoint.get(ctx)
        except ApiError as e:
            return failed(f"the metrics endpoint {endpoint} did not answer: {e.api_message}")
        ctx.artifact(f"metrics scraped from {endpoint} (first 80 lines)", "\n".join(text.splitlines()[:80]))
        try:
            samples = parse_metrics(text)
        except ValueError as e:
            return failed(f"{endpoint} does not serve the Prometheus text format: {e}")
        got = classify_metrics(samples)
        details = {"endpoint": str(endpoint), **{k: v for k, v in got.items()}}
        missing = [k for k in ("utilization", "memory") if not got[k]]
        if missing:
            return failed(f"{endpoint} lacks per-accelerator {' and '.join(missing)} metrics (with a device label)", **details)
        extras = [k for k in _OPTIONAL if got[k]]
        return passed(
            f"{endpoint} exposes per-accelerator utilization ({got['utilization'][0]}) and memory ({got['memory'][0]}) "
            f"for {len(got['devices'])} device(s)" + (f"; also {', '.join(extras)}" if extras else ""),
            **details,
        )


@register
class AiServiceMetrics(Check):
    id = "ai_service_metrics"
    plan = (
        "Find a Prometheus-compatible monitoring system (or --prometheus); deploy a pod serving a counter with a "
        "value unique to this run, ask the monitoring system to scrape it, and require the query API to return it."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        require_pods(ctx)
        if ctx.options.prometheus:
            prom = Endpoint(ctx.options.prometheus, "")
        else:
            found = _find_service(ctx, ("prometheus-operated", "prometheus"), port=9090,
                                  avoid=("operator", "adapter", "exporter", "alertmanager", "kube-state", "pushgateway", "grafana"))
            if found is None:
                return failed("no monitoring system found: no Prometheus-compatible query Service; pass --prometheus NS/SERVICE:PORT")
            prom = found
        prom.path = prom.path if prom.path not in ("", "/metrics") else ""
        ctx.step(f"monitoring system: {prom.namespace}/{prom.service}:{prom.port}")
        value = random.randint(1000, 9999)
        metric = "turbok_conformance_requests_total"
        text = (f"# HELP {metric} Requests served (turbok conformance workload).\n# TYPE {metric} counter\n"
                f'{metric}{{model="demo",run="{ctx.run_id}"}} {value}\n')
        name = ctx.name("svc-metrics")
        for obj in metrics_endpoint_objects(ctx, name, text):
            ctx.create(obj)
        ask_to_scrape(ctx, name)
        query = f'{metric}{{run="{ctx.run_id}"}}'
        last: list[Any] = []

        def collected() -> float | None:
            nonlocal last
            try:
                answer = json.loads(ctx.client.service_proxy(prom.namespace, prom.service, prom.port,
                                                             f"{prom.path}/api/v1/query", {"query": query}, scheme=prom.scheme))
            except (ClusterError, ValueError):
                return None
            last = ((answer.get("data") or {}).get("result")) or []
            for sample in last:
                if float(sample.get("value", [0, "nan"])[1]) == value:
                    return float(value)
            return None

        got = ctx.wait_for(collected, what=f"Prometheus to return {query} = {value}")
        if got is None:
            pod = ctx.client.get_or_none("v1", "Pod", name, ctx.namespace)
            why = pod_problem(pod) if pod and (pod.get("status") or {}).get("phase") != "Running" else f"last answer {last or 'empty'}"
            return failed(f"the monitoring system did not collect {metric} from a workload within {ctx.options.timeout:g}s: {why}")
        ctx.artifact(f"query {query}", json.dumps(last, indent=2), "json")
        return passed(f"Prometheus at {prom.namespace}/{prom.service} collected {metric}={value} scraped from a workload pod",
                      prometheus=f"{prom.namespace}/{prom.service}:{prom.port}")
