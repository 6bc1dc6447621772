"""Accelerator metrics: per-device allocation follows the claims; real GPUs' telemetry comes from nvidia-smi
(a stand-in script answering with recorded output) in the shape the ``accelerator_metrics`` check wants."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.unit.node.conftest import NodeHarness
from tests.unit.node.dra.conftest import dra_settings
from tests.unit.node.dra.test_node_dra import claim, claim_of, gpu_pod, template
from turbok.conformance.checks.observability import classify_metrics
from turbok.conformance.checks.workloads import parse_metrics
from turbok.node.dra.metrics import parse_gpu_usage
from turbok.node.dra.setup import DraSettings
from turbok.settings import SettingError, from_env

DATA = Path(__file__).parents[3] / "data" / "dra"
H100 = ("GPU-6b0b3b2a-5a61-4e0f-9d57-0f1c2a9e8b11", "GPU-1f2e3d4c-aaaa-bbbb-cccc-0123456789ab")


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``name``'s samples on the scrape, by their labels (sorted pairs)."""
    parsed = parse_metrics(generate_latest(registry).decode())
    return {tuple(sorted(labels.items())): value for labels, value in parsed.get(name, [])}


def allocations(registry: CollectorRegistry) -> dict[str, float]:
    return {dict(k)["device"]: v for k, v in samples(registry, "turbok_dra_device_allocations").items()}


async def test_per_device_allocation_follows_the_claims(harness: NodeHarness, sockets: Path) -> None:
    h = harness
    registry = CollectorRegistry()
    await h.start(dra=dataclasses.replace(dra_settings(sockets, gpus=2), metrics=registry))
    # Every published device is there, free.
    published = {d["name"] for s in h.registry.list(h.kinds.by_kind("resource.k8s.io/v1", "ResourceSlice"), None).items
                 for d in s["spec"].get("devices") or []}
    assert allocations(registry) == dict.fromkeys(published, 0.0)
    labels = next(dict(k) for k in samples(registry, "turbok_dra_device_allocations") if dict(k)["device"] == "gpu-0")
    assert labels == {"node": "node1", "driver": "gpu.nvidia.com", "pool": "node1", "device": "gpu-0"}

    h.create(template("one-gpu"))
    h.create(gpu_pod("a", template_name="one-gpu"))
    h.create(claim("shared"))
    h.create(gpu_pod("b", claim_name="shared"))
    h.create(gpu_pod("c", claim_name="shared"))
    for name in "abc":
        await h.wait_phase(name, "Running")
    # a's claim holds gpu-0; the claim b and c share holds gpu-1 once (one claim, two Pods).
    held = {r["device"] for r in claim_of(h, "shared")["status"]["allocation"]["devices"]["results"]}
    assert held == {"gpu-1"}
    await h.wait(lambda: allocations(registry)["gpu-0"] == 1 and allocations(registry)["gpu-1"] == 1,
                 what="gpu-0 and gpu-1 allocated once each")
    assert sum(allocations(registry).values()) == 2

    # Pods gone: the claims are deallocated (a's deleted), and the devices show free again.
    for name in "abc":
        h.delete(name)
    await h.wait(lambda: sum(allocations(registry).values()) == 0, what="every device free")
    assert set(allocations(registry)) == published

    # The collector leaves with the node: a later node on the same registry is not refused.
    await h.stop()
    assert "turbok_dra_device_allocations" not in generate_latest(registry).decode()


def fake_nvidia_smi(tmp: Path) -> Path:
    """An ``nvidia-smi`` answering the device query and banner with recorded output, and the usage query with
    ``usage.csv`` (exit status 9 while ``broken`` exists)."""
    script = tmp / "nvidia-smi"
    script.write_text(f"""#!{sys.executable}
import sys
from pathlib import Path
data, here = Path({str(DATA)!r}), Path({str(tmp)!r})
args = sys.argv[1:]
if not args:
    print((data / "nvidia-smi-banner.txt").read_text(), end="")
elif args[0].startswith("--query-gpu=index,uuid,name"):
    print((data / "nvidia-smi-query.csv").read_text(), end="")
elif args[0].startswith("--query-gpu=index,uuid,utilization.gpu"):
    if (here / "broken").exists():
        print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", file=sys.stderr)
        sys.exit(9)
    print((here / "usage.csv").read_text(), end="")
else:
    sys.exit(2)
""")
    script.chmod(0o755)
    (tmp / "usage.csv").write_text((DATA / "nvidia-smi-usage.csv").read_text())
    return script


async def test_real_gpus_report_utilization_and_memory_as_accelerator_metrics_wants(
        harness: NodeHarness, sockets: Path, tmp_path: Path) -> None:
    h = harness
    registry = CollectorRegistry()
    smi = fake_nvidia_smi(tmp_path)
    settings = dataclasses.replace(dra_settings(sockets, gpus=0), nvidia=True, nvidia_smi=str(smi),
                                   metrics=registry, gpu_metrics_seconds=0.05)
    await h.start(dra=settings)

    util = samples(registry, "turbok_gpu_utilization_ratio")
    by_gpu = {dict(k)["gpu"]: (dict(k), v) for k, v in util.items()}
    assert by_gpu["0"] == ({"node": "node1", "gpu": "0", "uuid": H100[0], "device": "gpu-0",
                            "model": "NVIDIA H100 80GB HBM3"}, 0.37)
    assert by_gpu["1"][1] == 0.0
    used = {dict(k)["gpu"]: v for k, v in samples(registry, "turbok_gpu_memory_used_bytes").items()}
    assert used == {"0": 1234 * 2**20, "1": 0}
    assert {dict(k)["gpu"]: v for k, v in samples(registry, "turbok_gpu_memory_total_bytes").items()} == {
        "0": 81559 * 2**20, "1": 81559 * 2**20}
    # gpu 1's power is [N/A]: no sample rather than a made-up one.
    assert {dict(k)["gpu"] for k in samples(registry, "turbok_gpu_power_watts")} == {"0"}

    # What the conformance check accelerator_metrics reads from a scrape: per-device utilization and memory.
    found = classify_metrics(parse_metrics(generate_latest(registry).decode()))
    assert found["utilization"] == ["turbok_gpu_utilization_ratio"]
    assert found["memory"] == ["turbok_gpu_memory_used_bytes"]
    assert {d.split("/")[-1] for d in found["devices"]} == set(H100)
    assert found["temperature"] and found["power"]

    # Sampled again: a new reading shows; a failing nvidia-smi drops them (nothing stale), and they come back.
    (tmp_path / "usage.csv").write_text((tmp_path / "usage.csv").read_text().replace(", 37, ", ", 90, "))
    await h.wait(lambda: by_index(registry).get("0") == 0.9, what="the new reading")
    (tmp_path / "broken").touch()
    await h.wait(lambda: not by_index(registry), what="samples dropped while nvidia-smi fails")
    assert allocations(registry)["gpu-0"] == 0  # allocation metrics are not nvidia-smi's
    (tmp_path / "broken").unlink()
    await h.wait(lambda: by_index(registry).get("0") == 0.9, what="samples back")


def by_index(registry: CollectorRegistry) -> dict[str, float]:
    return {dict(k)["gpu"]: v for k, v in samples(registry, "turbok_gpu_utilization_ratio").items()}


async def test_simulated_gpus_have_no_telemetry(harness: NodeHarness, sockets: Path) -> None:
    registry = CollectorRegistry()
    await harness.start(dra=dataclasses.replace(dra_settings(sockets, gpus=1), metrics=registry))
    text = generate_latest(registry).decode()
    assert "turbok_dra_device_allocations" in text
    assert "turbok_gpu_" not in text


def test_nvidia_smi_usage_is_parsed() -> None:
    usage = parse_gpu_usage((DATA / "nvidia-smi-usage.csv").read_text())
    assert [(u.index, u.uuid, u.utilization, u.memory_used_bytes, u.power_watts) for u in usage] == [
        (0, H100[0], 0.37, 1234 * 2**20, 71.23), (1, H100[1], 0.0, 0, None)]


def test_the_sampling_period_is_a_setting(tmp_path: Path) -> None:
    base = {"registry_dir": tmp_path, "plugin_dir": tmp_path, "cdi_dir": tmp_path}
    names = {"gpu_metrics_seconds": "TURBOK_GPU_METRICS_SECONDS"}
    assert from_env(DraSettings, names, {}, **base).gpu_metrics_seconds == 10.0
    assert from_env(DraSettings, names, {"TURBOK_GPU_METRICS_SECONDS": "2.5"}, **base).gpu_metrics_seconds == 2.5
    with pytest.raises(SettingError, match="TURBOK_GPU_METRICS_SECONDS='soon': not a number"):
        from_env(DraSettings, names, {"TURBOK_GPU_METRICS_SECONDS": "soon"}, **base)
    with pytest.raises(SettingError, match="gpu_metrics_seconds must be positive"):
        from_env(DraSettings, names, {"TURBOK_GPU_METRICS_SECONDS": "0"}, **base)
