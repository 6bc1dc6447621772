"""DRA on the node, put together: the plugin watcher, the claim controller, turbok's GPU driver.

``NodeDraStack(client, settings, node_name=..., events=..., state_dir=...)`` is made by
``turbok.node.node.Node`` when it is given ``DraSettings``; ``start`` runs, in order: the plugin manager
watching ``registry_dir``; turbok's ``gpu.nvidia.com`` driver as a kubelet plugin (simulated GPUs when
``simulated_gpus`` > 0, else the NVIDIA GPUs ``nvidia-smi`` finds, none without them), its ResourceSlices
published and its registration waited for; the claim controller (with the embedded scheduler only);
with ``metrics``, per-device allocation and (real GPUs) nvidia-smi's telemetry on that registry
(``metrics.AcceleratorMetrics``): ``load`` once the node routes its ResourceSlice and ResourceClaim changes to
``observe``.
``stop`` undoes it, the driver's slices removed (they name devices nobody serves any more).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from turbok.node.client import NodeClient, ObjectEvent
from turbok.node.dra.cdi import DEFAULT_CDI_DIRS, CdiRegistry
from turbok.node.dra.claims import ClaimController
from turbok.node.dra.kubeletplugin import KubeletPlugin
from turbok.node.dra.manager import NodeDra
from turbok.node.dra.metrics import AcceleratorMetrics, DeviceAllocations, GpuTelemetry
from turbok.node.dra.nvidia import GpuDriver, probe_gpus, simulated_gpus
from turbok.node.dra.plugins import PluginManager
from turbok.node.dra.scheduling import DraScheduling
from turbok.node.events import EventRecorder
from turbok.settings import SettingError

__all__ = ["KUBELET_PLUGINS", "KUBELET_REGISTRY", "DraSettings", "NodeDraStack", "default_plugin_dirs"]

log = logging.getLogger(__name__)

#: The kubelet's documented plugin paths: registration sockets, and plugins' own sockets.
KUBELET_REGISTRY = Path("/var/lib/kubelet/plugins_registry")
KUBELET_PLUGINS = Path("/var/lib/kubelet/plugins")


def default_plugin_dirs(home_state: Path) -> tuple[Path, Path]:
    """(registration dir, plugins dir): under ``$TURBOK_KUBELET_DIR`` when set; else the kubelet's own
    (``/var/lib/kubelet/plugins_registry``, ``/var/lib/kubelet/plugins``) when this process is root and no
    kubelet uses them; else under ``home_state/kubelet``."""
    override = os.environ.get("TURBOK_KUBELET_DIR")
    if override:
        return Path(override) / "plugins_registry", Path(override) / "plugins"
    kubelet_runs = Path("/var/lib/kubelet/kubeconfig").exists() or Path("/var/lib/kubelet/config.yaml").exists()
    if os.geteuid() == 0 and not kubelet_runs:
        return KUBELET_REGISTRY, KUBELET_PLUGINS
    return home_state / "kubelet" / "plugins_registry", home_state / "kubelet" / "plugins"


@dataclass(frozen=True)
class DraSettings:
    registry_dir: Path
    plugin_dir: Path
    #: where turbok's own drivers write their CDI specs (also searched, after the standard CDI dirs)
    cdi_dir: Path
    cdi_dirs: tuple[Path, ...] = DEFAULT_CDI_DIRS
    #: >0: turbok's GPU driver publishes this many simulated GPUs (and no real ones)
    simulated_gpus: int = 0
    #: publish the NVIDIA GPUs nvidia-smi finds (when not simulating)
    nvidia: bool = True
    poll_seconds: float = 1.0
    #: the registry of ``/metrics`` to put accelerator metrics on (None: none)
    metrics: CollectorRegistry | None = field(default=None, compare=False)
    #: seconds between two nvidia-smi samples of real GPUs' telemetry (TURBOK_GPU_METRICS_SECONDS)
    gpu_metrics_seconds: float = 10.0
    nvidia_smi: str = "nvidia-smi"

    def __post_init__(self) -> None:
        if not self.gpu_metrics_seconds > 0:
            raise SettingError(f"DraSettings: gpu_metrics_seconds must be positive, not {self.gpu_metrics_seconds!r}")


class NodeDraStack:
    def __init__(self, client: NodeClient, settings: DraSettings, *, node_name: str, events: EventRecorder,
                 embedded: bool) -> None:
        self.settings = settings
        self.client = client
        self.node_name = node_name
        self.plugins = PluginManager(settings.registry_dir, poll=settings.poll_seconds)
        self.manager = NodeDra(client, self.plugins, CdiRegistry([*settings.cdi_dirs, settings.cdi_dir]))
        # It keeps its allocator between rounds: observe() routes it every change that could make it stale.
        self.scheduling = DraScheduling(client, node_name, cache=True) if embedded else None
        self.claims = ClaimController(client, events) if embedded else None
        self.gpu_plugin: KubeletPlugin | None = None
        self.allocations = DeviceAllocations() if settings.metrics is not None else None
        self.telemetry: GpuTelemetry | None = None
        self.collector: AcceleratorMetrics | None = None
        kinds = client.kinds
        self._slice_key = kinds.by_kind("resource.k8s.io/v1", "ResourceSlice").key
        self._claim_key = kinds.by_kind("resource.k8s.io/v1", "ResourceClaim").key

    async def load(self) -> None:
        """The allocation metrics' first look at the slices and claims: once the node routes their changes
        here (``observe``), so that nothing between the listing and the first change is missed."""
        if self.allocations is not None:
            await self.allocations.load(self.client)

    def observe(self, event: ObjectEvent) -> None:
        """A DRA object changed (the node routes them here): the scheduler's kept allocator and the allocation
        metrics follow."""
        if self.scheduling is not None:
            self.scheduling.observe(event)
        if self.allocations is None or event.resource not in (self._slice_key, self._claim_key):
            return
        deleted = event.type == "DELETED"
        if event.resource == self._slice_key:
            self.allocations.slice_changed(event.object(), deleted=deleted)
        else:
            self.allocations.claim_changed(event.object(), deleted=deleted)

    async def start(self) -> None:
        await self.plugins.start()
        s = self.settings
        gpus = simulated_gpus(s.simulated_gpus) if s.simulated_gpus > 0 else (
            probe_gpus(s.nvidia_smi) if s.nvidia else [])
        if gpus:
            driver = GpuDriver(gpus, cdi_dir=s.cdi_dir)
            self.gpu_plugin = KubeletPlugin(driver, client=self.client, node_name=self.node_name,
                                            registry_dir=s.registry_dir, plugin_dir=s.plugin_dir)
            await self.gpu_plugin.start()
            await self.plugins.scan()
            log.info("DRA driver %s: %d %sGPU(s) published", driver.name, len(gpus),
                     "simulated " if s.simulated_gpus else "")
        if self.claims is not None:
            self.claims.start()
        if s.metrics is not None and self.allocations is not None:
            real = [g for g in gpus if not g.simulated]
            if real:
                self.telemetry = GpuTelemetry(real, nvidia_smi=s.nvidia_smi, interval=s.gpu_metrics_seconds)
                await self.telemetry.sample()  # the first scrape already has them
                self.telemetry.start()
            self.collector = AcceleratorMetrics(self.allocations, self.telemetry, node_name=self.node_name)
            self.collector.register(s.metrics)

    async def stop(self) -> None:
        if self.collector is not None and self.settings.metrics is not None:
            self.settings.metrics.unregister(self.collector)
            self.collector = None
        if self.telemetry is not None:
            await self.telemetry.stop()
        if self.claims is not None:
            await self.claims.stop()
        if self.gpu_plugin is not None:
            await self.gpu_plugin.stop()
        await self.plugins.stop()
