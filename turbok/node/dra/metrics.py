"""Accelerators on the control plane's ``/metrics``: per-device allocation, and NVIDIA GPUs' telemetry.

Made by ``setup.NodeDraStack`` when ``DraSettings.metrics`` names a registry (the embedded control
plane's, served on the API server's ``/metrics``). Nothing here lists objects or runs a program while
a scrape waits: a scrape reads what was kept.

- ``DeviceAllocations``: loaded once (``load``), then fed every ResourceSlice and ResourceClaim change
  by the node (``changed``). ``turbok_dra_device_allocations{node,driver,pool,device}``: how many
  allocated ResourceClaims hold each device (0: free; more than 1 only on a device that allows multiple
  allocations, such as ``gpu-<i>-shared``). Every device a slice publishes has a sample, so free ones
  show; a device a claim holds that no slice publishes any more (its driver went) still shows.
  Admin-access results are not counted (they do not take the device).
- ``GpuTelemetry``: every ``interval`` seconds, ``nvidia-smi --query-gpu=...`` for the GPUs turbok's
  driver publishes (real ones only: a simulated GPU has no utilization to report), kept as
  ``turbok_gpu_utilization_ratio``, ``turbok_gpu_memory_used_bytes``, ``turbok_gpu_memory_total_bytes``,
  ``turbok_gpu_temperature_celsius``, ``turbok_gpu_power_watts`` with the labels ``gpu`` (index),
  ``uuid``, ``device`` (the DRA device, ``gpu-<i>``), ``model`` and ``node``: what the conformance check
  ``accelerator_metrics`` looks for. A value nvidia-smi does not know (``[N/A]``) has no sample; a
  failed or hung nvidia-smi drops them all until it answers again (stale telemetry is not reported).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from turbok.node.client import NodeClient, Obj
from turbok.node.dra.nvidia import Gpu

__all__ = ["USAGE_QUERY", "AcceleratorMetrics", "DeviceAllocations", "GpuTelemetry", "GpuUsage",
           "parse_gpu_usage"]

log = logging.getLogger(__name__)

USAGE_QUERY = "index,uuid,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw"
#: How long one nvidia-smi may take before its answer is given up (and the samples dropped).
USAGE_TIMEOUT = 10.0

#: (driver, pool, device)
DeviceKey = tuple[str, str, str]


class DeviceAllocations:
    """Which devices the API's ResourceSlices publish and how many allocated claims hold each."""

    def __init__(self) -> None:
        #: slice name -> (node, devices it publishes)
        self._slices: dict[str, tuple[str, list[DeviceKey]]] = {}
        #: claim uid -> the devices its allocation holds
        self._claims: dict[str, list[DeviceKey]] = {}

    async def load(self, client: NodeClient) -> None:
        for s in await client.list(client.kinds.by_kind("resource.k8s.io/v1", "ResourceSlice")):
            self.slice_changed(s, deleted=False)
        for c in await client.list(client.kinds.by_kind("resource.k8s.io/v1", "ResourceClaim")):
            self.claim_changed(c, deleted=False)

    def slice_changed(self, obj: Obj, *, deleted: bool) -> None:
        name = obj["metadata"]["name"]
        if deleted:
            self._slices.pop(name, None)
            return
        spec = obj.get("spec") or {}
        driver, pool = str(spec.get("driver", "")), str((spec.get("pool") or {}).get("name", ""))
        self._slices[name] = (str(spec.get("nodeName") or ""),
                              [(driver, pool, str(d.get("name"))) for d in spec.get("devices") or []])

    def claim_changed(self, obj: Obj, *, deleted: bool) -> None:
        uid = obj["metadata"]["uid"]
        allocation = (obj.get("status") or {}).get("allocation")
        if deleted or not allocation:
            self._claims.pop(uid, None)
            return
        self._claims[uid] = [(str(r.get("driver")), str(r.get("pool")), str(r.get("device")))
                             for r in (allocation.get("devices") or {}).get("results") or []
                             if not r.get("adminAccess")]

    def counts(self) -> dict[DeviceKey, tuple[str, int]]:
        """Each known device: (its node, the allocated claims holding it)."""
        out: dict[DeviceKey, tuple[str, int]] = {}
        for node, devices in self._slices.values():
            for key in devices:
                out[key] = (node, 0)
        for devices in self._claims.values():
            for key in set(devices):
                node, n = out.get(key, ("", 0))
                out[key] = (node, n + 1)
        return out


@dataclass(frozen=True)
class GpuUsage:
    index: int
    uuid: str
    utilization: float | None  # 0..1
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_celsius: float | None
    power_watts: float | None


def _number(text: str) -> float | None:
    """A value of nvidia-smi's ``nounits`` CSV; None for ``[N/A]``, ``[Not Supported]`` and the like."""
    try:
        return float(text)
    except ValueError:
        return None


def parse_gpu_usage(csv: str) -> list[GpuUsage]:
    """``nvidia-smi --query-gpu=<USAGE_QUERY> --format=csv,noheader,nounits`` (utilization in %, memory in MiB)."""
    out = []
    for line in csv.splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 7 or not cols[0].isdigit():
            continue
        util, used, total, temp, power = (_number(c) for c in cols[2:7])
        out.append(GpuUsage(index=int(cols[0]), uuid=cols[1], utilization=None if util is None else util / 100,
                            memory_used_bytes=None if used is None else int(used) * 2**20,
                            memory_total_bytes=None if total is None else int(total) * 2**20,
                            temperature_celsius=temp, power_watts=power))
    return out


class GpuTelemetry:
    """The last answer of ``nvidia-smi`` about the published GPUs, asked every ``interval`` seconds."""

    def __init__(self, gpus: list[Gpu], *, nvidia_smi: str, interval: float) -> None:
        self.gpus = {g.uuid: g for g in gpus}
        self.nvidia_smi = nvidia_smi
        self.interval = interval
        self.usage: list[GpuUsage] = []
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dra-gpu-telemetry")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.interval)

    async def sample(self) -> None:
        """Ask nvidia-smi once; keep its answer, or none when it fails (said once per failing spell)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                self.nvidia_smi, f"--query-gpu={USAGE_QUERY}", "--format=csv,noheader,nounits",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as e:
            self._failed(str(e))
            return
        try:
            out, err = await asyncio.wait_for(proc.communicate(), USAGE_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            self._failed(f"no answer in {USAGE_TIMEOUT:g} s")
            return
        if proc.returncode != 0:
            self._failed(f"exit status {proc.returncode}: {err.decode(errors='replace').strip()[:200]}")
            return
        self.usage = [u for u in parse_gpu_usage(out.decode(errors="replace")) if u.uuid in self.gpus]
        self._failing = False

    def _failed(self, why: str) -> None:
        self.usage = []
        if not self._failing:
            log.warning("GPU telemetry: %s: %s (no turbok_gpu_* samples until it answers)", self.nvidia_smi, why)
        self._failing = True


class AcceleratorMetrics(Collector):
    """The Prometheus collector over ``DeviceAllocations`` and, with real GPUs, ``GpuTelemetry``."""

    def __init__(self, allocations: DeviceAllocations, telemetry: GpuTelemetry | None, *, node_name: str) -> None:
        self.allocations = allocations
        self.telemetry = telemetry
        self.node_name = node_name

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        allocated = GaugeMetricFamily(
            "turbok_dra_device_allocations",
            "Allocated ResourceClaims holding this device (0: free), from the ResourceSlices and claims.",
            labels=["node", "driver", "pool", "device"])
        for (driver, pool, device), (node, n) in sorted(self.allocations.counts().items()):
            allocated.add_metric([node, driver, pool, device], n)
        yield allocated
        if self.telemetry is None:
            return
        labels = ["node", "gpu", "uuid", "device", "model"]
        families = {
            "utilization": GaugeMetricFamily("turbok_gpu_utilization_ratio",
                                             "Time the GPU was busy over nvidia-smi's last sample period.", labels=labels),
            "memory_used": GaugeMetricFamily("turbok_gpu_memory_used_bytes", "GPU memory in use.", labels=labels),
            "memory_total": GaugeMetricFamily("turbok_gpu_memory_total_bytes", "GPU memory in all.", labels=labels),
            "temperature": GaugeMetricFamily("turbok_gpu_temperature_celsius", "GPU core temperature.", labels=labels),
            "power": GaugeMetricFamily("turbok_gpu_power_watts", "GPU power draw.", labels=labels),
        }
        for u in self.telemetry.usage:
            gpu = self.telemetry.gpus[u.uuid]
            values = [self.node_name, str(u.index), u.uuid, f"gpu-{gpu.index}", gpu.product]
            for key, value in (("utilization", u.utilization), ("memory_used", u.memory_used_bytes),
                               ("memory_total", u.memory_total_bytes), ("temperature", u.temperature_celsius),
                               ("power", u.power_watts)):
                if value is not None:
                    families[key].add_metric(values, value)
        yield from families.values()
