"""turbok's GPU driver, ``gpu.nvidia.com``: the NVIDIA GPUs this machine has, or simulated ones.

Two sources of devices, one driver (it is served like any outside driver, by
``kubeletplugin.KubeletPlugin``):

- **NVIDIA** (``probe_gpus``): ``nvidia-smi --query-gpu=...`` gives each GPU's
  index, UUID, product name, memory, driver version, PCI bus id and minor
  number (``/dev/nvidia<minor>``); ``nvidia-smi``'s banner the CUDA version.
  Prepared devices reach the container as their device nodes, the control
  nodes (``/dev/nvidiactl``, ``/dev/nvidia-uvm``...), the driver's user-space
  libraries and ``nvidia-smi`` mounted read-only, ``NVIDIA_VISIBLE_DEVICES``
  (UUIDs) and ``TURBOK_VISIBLE_DEVICES`` (device names); the gVisor sandbox
  gets them through nvproxy (``turbok.runtime.pods_gvisor``).
- **simulated** (``simulated_gpus(n)``, ``turbok up --simulated-gpus N``): N
  devices with the same attributes (``simulated: true``, product
  ``turbok simulated GPU``), handed to the container as
  ``TURBOK_VISIBLE_DEVICES`` only. For tests, demos and machines without GPUs.

What each GPU is published as (one pool per node; slice ``<node>-gpu.nvidia.com-counters``
holds the shared counters, the others the devices):

- ``gpu-<i>``: the whole GPU (``type: gpu``), consuming all of its counter set
  ``gpu-<i>`` (``memory``);
- ``gpu-<i>-part-<j>`` (``PARTITIONS`` per GPU, simulated only; real MIG is not
  read yet): a partition (``type: partition``) consuming its share, so a whole
  GPU and its partitions never go to two claims at once;
- ``gpu-<i>-shared``: time-slicing (``type: shared``, ``allowMultipleAllocations``,
  capacity ``timeSlices`` = ``TIME_SLICES``: up to that many claims share the
  GPU, one slice each unless a claim asks for more), consuming the whole GPU's counters.

DeviceClasses created if absent: ``gpu.nvidia.com`` (whole GPUs),
``gpu-partition.turbok.dev`` and ``gpu-shared.turbok.dev``.
"""

from __future__ import annotations

import contextlib
import glob
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turbok.api.quantity import format_quantity
from turbok.node.dra.kubeletplugin import Driver, results_by_device, write_cdi_spec

__all__ = ["DRIVER", "PARTITIONS", "TIME_SLICES", "Gpu", "GpuDriver", "parse_nvidia_smi", "probe_gpus",
           "simulated_gpus"]

Obj = dict[str, Any]

DRIVER = "gpu.nvidia.com"
#: Partitions published per simulated GPU.
PARTITIONS = 2
#: Claims that may share one GPU by time-slicing (the ``timeSlices`` capacity of ``gpu-<i>-shared``).
TIME_SLICES = 4
#: Devices per ResourceSlice (1.37's bound for devices that consume counters).
SLICE_DEVICES = 64
QUERY = "index,uuid,name,memory.total,driver_version,pci.bus_id,minor_number"
CDI_KIND = "k8s.gpu.nvidia.com/claim"
#: Control device nodes a CUDA program opens besides its GPUs' (those present are passed).
CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
#: The driver's user-space parts a container needs (those present are mounted read-only).
LIBRARY_GLOBS = ("/usr/lib/x86_64-linux-gnu/libcuda.so*", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so*",
                 "/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so*",
                 "/usr/lib/x86_64-linux-gnu/libnvidia-nvvm.so*", "/usr/lib/x86_64-linux-gnu/libcudadebugger.so*",
                 "/usr/bin/nvidia-smi")


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    product: str
    memory_bytes: int
    driver_version: str
    cuda_version: str
    pci_bus_id: str
    minor: int
    simulated: bool = False


def _version(text: str) -> str:
    """A driver or CUDA version as semver (``550.54.15``; ``12.4`` -> ``12.4.0``; leading zeros dropped)."""
    parts = [str(int(p)) for p in re.findall(r"\d+", text)[:3]]
    while len(parts) < 3:
        parts.append("0")
    return ".".join(parts)


def parse_nvidia_smi(csv: str, banner: str = "") -> list[Gpu]:
    """GPUs from ``nvidia-smi --query-gpu=<QUERY> --format=csv,noheader,nounits`` (memory in MiB) and the
    CUDA version from the plain ``nvidia-smi`` banner (``CUDA Version: 12.4``)."""
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", banner)
    out = []
    for line in csv.splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 7 or not cols[0].isdigit():
            continue
        index, gpu_uuid, name, memory, driver, bus, minor = cols[:7]
        out.append(Gpu(index=int(index), uuid=gpu_uuid, product=name,
                       memory_bytes=int(float(memory)) * 2**20 if memory.replace(".", "").isdigit() else 0,
                       driver_version=_version(driver), cuda_version=_version(cuda[1]) if cuda else "",
                       pci_bus_id=bus.lower(), minor=int(minor) if minor.isdigit() else int(index)))
    return out


def probe_gpus(nvidia_smi: str = "nvidia-smi") -> list[Gpu]:
    """This machine's NVIDIA GPUs (none without ``nvidia-smi`` or a working driver)."""
    path = shutil.which(nvidia_smi)
    if path is None:
        return []
    try:
        csv = subprocess.run([path, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"], check=True,
                             capture_output=True, text=True, timeout=30).stdout
        banner = subprocess.run([path], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(csv, banner)


def simulated_gpus(n: int, *, memory_bytes: int = 16 * 2**30) -> list[Gpu]:
    """``n`` simulated GPUs: stable UUIDs (derived from the index), the attributes a real one has."""
    return [Gpu(index=i, uuid=f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'turbok-simulated-gpu-{i}')}",
                product="turbok simulated GPU", memory_bytes=memory_bytes, driver_version="0.0.0",
                cuda_version="0.0.0", pci_bus_id=f"00000000:{0x10 + i:02x}:00.0", minor=i, simulated=True)
            for i in range(n)]


def _class(name: str, expression: str) -> Obj:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": name},
            "spec": {"selectors": [{"cel": {"expression": expression}}]}}


class GpuDriver(Driver):
    name = DRIVER

    def __init__(self, gpus: list[Gpu], *, cdi_dir: Path) -> None:
        self.gpus = gpus
        self.cdi_dir = cdi_dir
        self._by_name = {d["name"]: (g, d) for g in gpus for d in self._devices(g)}

    # ------------------------------------------------------------ what is published

    def _attributes(self, g: Gpu, kind: str) -> Obj:
        attrs: Obj = {"type": {"string": kind}, "uuid": {"string": g.uuid}, "productName": {"string": g.product[:64]},
                      "index": {"int": g.index}, "minor": {"int": g.minor},
                      "pcieBusID": {"string": g.pci_bus_id}, "simulated": {"bool": g.simulated}}
        if g.driver_version:
            attrs["driverVersion"] = {"version": g.driver_version}
        if g.cuda_version:
            attrs["cudaDriverVersion"] = {"version": g.cuda_version}
        return attrs

    def _devices(self, g: Gpu) -> list[Obj]:
        memory = format_quantity(_dec(g.memory_bytes), binary=True)
        whole = [{"counterSet": f"gpu-{g.index}", "counters": {"memory": {"value": memory}}}]
        devices: list[Obj] = [{"name": f"gpu-{g.index}", "attributes": self._attributes(g, "gpu"),
                               "capacity": {"memory": {"value": memory}}, "consumesCounters": whole}]
        if g.simulated:
            share = format_quantity(_dec(g.memory_bytes // PARTITIONS), binary=True)
            for j in range(PARTITIONS):
                devices.append({"name": f"gpu-{g.index}-part-{j}",
                                "attributes": {**self._attributes(g, "partition"), "partition": {"int": j}},
                                "capacity": {"memory": {"value": share}},
                                "consumesCounters": [{"counterSet": f"gpu-{g.index}",
                                                      "counters": {"memory": {"value": share}}}]})
        devices.append({"name": f"gpu-{g.index}-shared", "attributes": self._attributes(g, "shared"),
                        "allowMultipleAllocations": True,
                        # Only time slices: a capacity without a requestPolicy is all taken by each share
                        # (as kube-scheduler counts it), so the GPU's memory here would allow one share.
                        "capacity": {"timeSlices": {"value": str(TIME_SLICES), "requestPolicy": {
                                         "default": "1", "validRange": {"min": "1", "max": str(TIME_SLICES)}}}},
                        "consumesCounters": whole})
        return devices

    def resource_slices(self, node_name: str) -> list[Obj]:
        devices = [d for g in self.gpus for d in self._devices(g)]
        if not devices:
            return []
        chunks = [devices[i:i + SLICE_DEVICES] for i in range(0, len(devices), SLICE_DEVICES)]
        pool = {"name": node_name, "generation": 1, "resourceSliceCount": len(chunks) + 1}
        base = f"{node_name}-{DRIVER}"
        counters = [{"name": f"gpu-{g.index}",
                     "counters": {"memory": {"value": format_quantity(_dec(g.memory_bytes), binary=True)}}}
                    for g in self.gpus]
        out = [{"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": f"{base}-counters"},
                "spec": {"driver": DRIVER, "nodeName": node_name, "pool": pool, "sharedCounters": counters}}]
        for i, chunk in enumerate(chunks):
            out.append({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                        "metadata": {"name": f"{base}-{i}"},
                        "spec": {"driver": DRIVER, "nodeName": node_name, "pool": pool, "devices": chunk}})
        return out

    def device_classes(self) -> list[Obj]:
        typed = f'device.driver == "{DRIVER}" && device.attributes["{DRIVER}"].type == '
        return [_class("gpu.nvidia.com", typed + '"gpu"'), _class("gpu-partition.turbok.dev", typed + '"partition"'),
                _class("gpu-shared.turbok.dev", typed + '"shared"')]

    # ------------------------------------------------------------ preparing a claim

    def _spec_path(self, claim_uid: str) -> Path:
        return self.cdi_dir / f"turbok-{DRIVER}-{claim_uid}.json"

    def edits(self, gpu: Gpu, device: str) -> Obj:
        """The CDI container edits of one allocated device."""
        env = [f"TURBOK_VISIBLE_DEVICES={device}"]
        if gpu.simulated:
            return {"env": env}
        env.append(f"NVIDIA_VISIBLE_DEVICES={gpu.uuid}")
        nodes = [{"path": f"/dev/nvidia{gpu.minor}"}] + [{"path": p} for p in CONTROL_NODES if Path(p).exists()]
        mounts = [{"hostPath": f, "containerPath": f, "options": ["ro", "nosuid", "nodev", "bind"]}
                  for pattern in LIBRARY_GLOBS for f in sorted(glob.glob(pattern))]
        return {"env": env, "deviceNodes": nodes, "mounts": mounts}

    def prepare(self, claim: Obj, results: list[Obj]) -> list[tuple[list[str], str, str, list[str]]]:
        uid = claim["metadata"]["uid"]
        devices: dict[str, Obj] = {}
        out = []
        for (pool, device), requests in results_by_device(results).items():
            found = self._by_name.get(device)
            if found is None:
                raise LookupError(f"device {device} is not one of this node's ({', '.join(sorted(self._by_name))})")
            cdi_name = f"{uid}-{device}"
            devices[cdi_name] = self.edits(found[0], device)
            out.append((requests, pool, device, [f"{CDI_KIND}={cdi_name}"]))
        if devices:
            write_cdi_spec(self._spec_path(uid), CDI_KIND, devices)
        return out

    def unprepare(self, claim_uid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._spec_path(claim_uid).unlink()


def _dec(n: int) -> Any:
    from decimal import Decimal

    return Decimal(n)
