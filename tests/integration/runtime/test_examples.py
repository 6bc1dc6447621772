"""The upstream examples' pod templates run unchanged (placeholders filled) under runsc."""

from __future__ import annotations

import asyncio
import string
from pathlib import Path
from typing import Any

import pytest
import yaml

from turbok.runtime.base import Phase, SandboxSpec, sandbox_id
from turbok.runtime.gvisor import RunscRuntime
from turbok.runtime.layout import SandboxDir

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

EXAMPLES = Path(__file__).parents[2] / "data" / "runtime" / "examples"
PLACEHOLDERS = {
    "SANDBOX_TEMPLATE_NAME": "python-sandbox-template",
    "SANDBOX_NAMESPACE": "default",
    "SANDBOX_WARMPOOL_NAME": "python-pool",
    "IMAGE": "python-runtime-sandbox",
}
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def load(name: str) -> dict[str, Any]:
    text = string.Template((EXAMPLES / name).read_text()).substitute(PLACEHOLDERS)
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def to_spec(doc: dict[str, Any]) -> SandboxSpec:
    """What the controller does with a pod template's first container (the part the runtime needs)."""
    c = doc["spec"]["podTemplate"]["spec"]["containers"][0]
    limits = (c.get("resources") or {}).get("limits") or {}
    mem = limits.get("memory")
    cpu = limits.get("cpu")
    return SandboxSpec(
        id=sandbox_id(f"example-{doc['metadata']['name']}"),
        hostname=doc["metadata"]["name"],
        image=c["image"],
        command=c.get("command") or (),
        args=c.get("args") or (),
        env={e["name"]: e["value"] for e in c.get("env") or () if "value" in e},
        working_dir=c.get("workingDir"),
        cpu_millis=None if cpu is None else int(float(cpu.rstrip("m")) * (1 if cpu.endswith("m") else 1000)),
        memory_bytes=None if mem is None else int(mem[:-2]) * _UNITS[mem[-2:]],
    )


async def test_python_sandbox_template_serves_exec_in_app(runtime: RunscRuntime) -> None:
    spec = to_spec(load("python-sandbox-template.yaml"))
    assert "python-runtime-sandbox" in spec.image
    assert (await runtime.start(spec)).phase is Phase.RUNNING
    try:
        # What the runtime API's /execute runs for the official client.
        r = await runtime.exec(spec.id, ["/bin/sh", "-c", "python3 -c 'print(6*7)' && pwd && ls"], timeout=30)
        assert (r.exit_code, r.stdout.decode().split()[:2]) == (0, ["42", "/app"])
    finally:
        await runtime.remove(spec.id)


async def test_python_counter_template_counts(runtime: RunscRuntime) -> None:
    spec = to_spec(load("python-counter-template.yaml"))
    assert spec.image == "python:3.11-slim" and spec.command == ["python3", "-c"]
    await runtime.start(spec)
    log = SandboxDir(runtime.root, spec.id).stdout_log
    try:
        for _ in range(100):
            if "Count: 1" in log.read_text():
                break
            await asyncio.sleep(0.1)
        assert log.read_text().startswith("Count: 0\nCount: 1\n")
        assert (await runtime.state(spec.id)).phase is Phase.RUNNING
    finally:
        await runtime.remove(spec.id)


async def test_hello_world_sandbox_runs_its_image(runtime: RunscRuntime) -> None:
    doc = load("hello-world-sandbox__hello-world.yaml")
    doc = {"metadata": doc["metadata"], "spec": {"podTemplate": doc["spec"]["podTemplate"]}}
    spec = to_spec(doc)
    state = await runtime.start(spec)
    try:
        assert state.phase is Phase.RUNNING
        assert (await runtime.exec(spec.id, ["hostname"])).stdout == b"hello-world\n"
    finally:
        await runtime.remove(spec.id)
