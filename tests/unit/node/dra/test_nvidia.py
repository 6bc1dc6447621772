"""turbok's gpu.nvidia.com driver: nvidia-smi output (recorded on an H100 machine's format), what it publishes
(valid as kube-apiserver 1.37 checks slices), the CDI edits of a real GPU (device nodes, nvproxy), simulated GPUs."""

from __future__ import annotations

import json
from pathlib import Path

from turbok.api import dra
from turbok.node.dra.cdi import CdiRegistry
from turbok.node.dra.manager import PodDevices
from turbok.node.dra.nvidia import GpuDriver, parse_nvidia_smi, simulated_gpus
from turbok.runtime.cri import ContainerConfig, DeviceNode, PodSandboxConfig
from turbok.runtime.pods_gvisor import add_devices, nvproxy_flags

DATA = Path(__file__).resolve().parents[3] / "data" / "dra"


def recorded() -> list:  # type: ignore[type-arg]
    return parse_nvidia_smi((DATA / "nvidia-smi-query.csv").read_text(), (DATA / "nvidia-smi-banner.txt").read_text())


def test_nvidia_smi_output_is_parsed() -> None:
    gpus = recorded()
    assert [(g.index, g.minor, g.uuid) for g in gpus] == [
        (0, 0, "GPU-6b0b3b2a-5a61-4e0f-9d57-0f1c2a9e8b11"), (1, 1, "GPU-1f2e3d4c-aaaa-bbbb-cccc-0123456789ab")]
    assert gpus[0].product == "NVIDIA H100 80GB HBM3"
    assert gpus[0].memory_bytes == 81559 * 2**20
    assert (gpus[0].driver_version, gpus[0].cuda_version) == ("550.54.15", "12.4.0")
    assert gpus[1].pci_bus_id == "00000000:2a:00.0"
    assert parse_nvidia_smi("No devices were found\n") == []


def test_published_slices_are_valid_and_complete(tmp_path: Path) -> None:
    for gpus in (recorded(), simulated_gpus(3)):
        slices = GpuDriver(gpus, cdi_dir=tmp_path).resource_slices("node1")
        for s in slices:
            assert dra.validate_slice(s) == [], s["metadata"]["name"]
        assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {len(slices)}
        devices = [d for s in slices for d in s["spec"].get("devices") or []]
        whole = [d for d in devices if d["attributes"]["type"]["string"] == "gpu"]
        assert [d["attributes"]["uuid"]["string"] for d in whole] == [g.uuid for g in gpus]
        assert all(d["consumesCounters"] for d in devices)
    simulated = GpuDriver(simulated_gpus(1), cdi_dir=tmp_path).resource_slices("n")[1]["spec"]["devices"]
    assert [d["name"] for d in simulated] == ["gpu-0", "gpu-0-part-0", "gpu-0-part-1", "gpu-0-shared"]
    assert simulated[0]["attributes"]["simulated"] == {"bool": True}
    assert simulated[3]["allowMultipleAllocations"] is True


def test_a_real_gpu_reaches_the_container_as_device_nodes_through_nvproxy(tmp_path: Path) -> None:
    gpu = recorded()[1]
    edits = GpuDriver([gpu], cdi_dir=tmp_path).edits(gpu, "gpu-1")
    assert "NVIDIA_VISIBLE_DEVICES=GPU-1f2e3d4c-aaaa-bbbb-cccc-0123456789ab" in edits["env"]
    assert "TURBOK_VISIBLE_DEVICES=gpu-1" in edits["env"]
    assert edits["deviceNodes"][0] == {"path": "/dev/nvidia1"}
    # The node turns CDI device nodes into the OCI spec's devices, and nvidia ones into runsc --nvproxy.
    devices = PodDevices()
    from turbok.node.dra.cdi import Edits

    devices.add("main", Edits(env={"TURBOK_VISIBLE_DEVICES": "gpu-1"},
                              devices=[DeviceNode(path="/dev/nvidia1", host_path="/dev/nvidia1", major=195, minor=1)]))
    assert devices.nvproxy
    config = devices.apply(ContainerConfig(name="main", image="i", env={"A": "b"}))
    assert config.env == {"TURBOK_VISIBLE_DEVICES": "gpu-1", "A": "b"}
    spec: dict = {"linux": {}}  # type: ignore[type-arg]
    add_devices(spec, config.devices)
    assert spec["linux"]["devices"] == [{"path": "/dev/nvidia1", "type": "c", "major": 195, "minor": 1}]
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "type": "c", "major": 195, "minor": 1,
                                                      "access": "rwm"}]
    pod = PodSandboxConfig(id="x", name="p", namespace="n", uid="u", hostname="p")
    assert nvproxy_flags(pod) == ()
    import dataclasses

    assert nvproxy_flags(dataclasses.replace(pod, nvproxy=True)) == ("--nvproxy=true",)


def test_prepare_writes_a_cdi_spec_the_node_resolves(tmp_path: Path) -> None:
    driver = GpuDriver(simulated_gpus(2), cdi_dir=tmp_path)
    claim = {"metadata": {"uid": "u-1", "name": "c", "namespace": "d"}}
    results = [{"request": "gpu", "driver": "gpu.nvidia.com", "pool": "n", "device": "gpu-0"},
               {"request": "gpu", "driver": "gpu.nvidia.com", "pool": "n", "device": "gpu-1-part-1"}]
    prepared = driver.prepare(claim, results)
    ids = [i for _, _, _, found in prepared for i in found]
    assert ids == ["k8s.gpu.nvidia.com/claim=u-1-gpu-0", "k8s.gpu.nvidia.com/claim=u-1-gpu-1-part-1"]
    spec = json.loads((tmp_path / "turbok-gpu.nvidia.com-u-1.json").read_text())
    assert spec["kind"] == "k8s.gpu.nvidia.com/claim"
    edits = CdiRegistry([tmp_path]).edits(ids)
    assert edits.env == {"TURBOK_VISIBLE_DEVICES": "gpu-0,gpu-1-part-1"} and edits.devices == []
    driver.unprepare("u-1")
    assert not (tmp_path / "turbok-gpu.nvidia.com-u-1.json").exists()
