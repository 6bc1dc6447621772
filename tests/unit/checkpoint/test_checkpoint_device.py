"""The accelerator path (device.py) on a simulated device: the same calls, streams as threads.

What is checked: the copies see the state as of save(); the training stream's later kernels
wait for them (fence) while the host does not; pinned buffers are registered once per buffer
and reused; without registration the copy goes through a bounded set of staging buffers;
a restore writes straight into the device tensors. The same two checks with CudaBackend on a
real GPU at the end (skipped without one).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from turbok.checkpoint.device import DeviceStager, SimulatedBackend


def _state(n: int = 1 << 16) -> tuple[SimulatedBackend, list[torch.Tensor]]:
    sim = SimulatedBackend(copy_delay=0.05)
    return sim, [sim.mark(torch.full((n,), float(i))) for i in range(3)]


def _layout(tensors: list[torch.Tensor]) -> tuple[np.ndarray, list[tuple[torch.Tensor, int, int]]]:
    sizes = [t.numel() * t.element_size() for t in tensors]
    buf = np.zeros(sum(sizes), dtype=np.uint8)
    offs = np.cumsum([0, *sizes[:-1]])
    return buf, [(t, int(o), s) for t, o, s in zip(tensors, offs, sizes, strict=True)]


def test_snapshot_sees_the_state_of_save_and_later_kernels_wait_for_it() -> None:
    sim, tensors = _state()
    stager = DeviceStager(sim)
    buf, copies = _layout(tensors)
    t0 = time.perf_counter()
    snap = stager.snapshot(buf, copies)
    assert time.perf_counter() - t0 < 0.04, "save() waited for the copies"
    stager.fence()  # the optimizer hook: device-side, the host goes on
    sim.launch(lambda: [t.add_(100) for t in tensors])  # the optimizer step, on the training stream
    snap.wait()
    sim.drain()
    expect = np.concatenate([np.full(t.numel(), float(i), dtype=np.float32) for i, t in enumerate(tensors)])
    assert np.array_equal(buf.view(np.float32), expect), "the copy saw a later state"
    assert all(float(t[0]) == 100 + i for i, t in enumerate(tensors))


def test_pinned_buffers_are_registered_once_and_reused() -> None:
    sim, tensors = _state(1 << 10)
    stager = DeviceStager(sim)
    buf, copies = _layout(tensors)
    for _ in range(3):
        stager.snapshot(buf, copies).wait()
    assert sim.registered == 1 and sim.allocated == 0


def test_without_registration_the_copy_goes_through_bounded_staging_buffers() -> None:
    sim = SimulatedBackend(can_register=False)
    tensors = [sim.mark(torch.arange(5000, dtype=torch.float32) * (i + 1)) for i in range(3)]
    stager = DeviceStager(sim, chunk=4096, staging_buffers=2)
    buf, copies = _layout(tensors)
    snap = stager.snapshot(buf, copies)
    stager.fence()
    sim.launch(lambda: [t.zero_() for t in tensors])
    snap.wait()
    sim.drain()
    expect = np.concatenate([(np.arange(5000, dtype=np.float32) * (i + 1)) for i in range(3)])
    assert np.array_equal(buf.view(np.float32), expect)
    assert sim.allocated == 2, "staging buffers are allocated once, two of them"
    stager.snapshot(buf, copies).wait()
    assert sim.allocated == 2


def test_restore_goes_straight_into_device_tensors() -> None:
    for register in (True, False):
        sim = SimulatedBackend(can_register=register)
        stager = DeviceStager(sim, chunk=1000)
        src = np.arange(3000, dtype=np.float32)
        dst = sim.mark(torch.zeros(3000))
        stager.restore_into(src.view(np.uint8), [(src.view(np.uint8), dst)])
        sim.drain()
        assert torch.equal(dst, torch.from_numpy(src))


# The same logic on a real GPU (CudaBackend). Skipped where there is none: this machine has no
# GPU, so these were never run here (docs/checkpoint.md, "GPU tensors").
cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="no CUDA GPU on this machine (torch.cuda.is_available() is False)")


@cuda
def test_cuda_snapshot_sees_the_state_of_save_and_the_optimizer_waits_on_the_device() -> None:
    from turbok.checkpoint.device import CudaBackend

    tensors = [torch.full((1 << 22,), float(i), device="cuda") for i in range(3)]
    stager = DeviceStager(CudaBackend())
    buf, copies = _layout(tensors)
    snap = stager.snapshot(buf, copies)
    stager.fence()  # the training stream waits for the side stream's copies, on the device
    for t in tensors:
        t.add_(100)  # the optimizer step, queued on the training stream
    snap.wait()
    torch.cuda.synchronize()
    expect = np.concatenate([np.full(t.numel(), float(i), dtype=np.float32) for i, t in enumerate(tensors)])
    assert np.array_equal(buf.view(np.float32), expect), "the copy saw a later state"
    assert all(float(t[0]) == 100 + i for i, t in enumerate(tensors))


@cuda
def test_cuda_restore_goes_straight_into_device_tensors() -> None:
    from turbok.checkpoint.device import CudaBackend

    stager = DeviceStager(CudaBackend(), chunk=1 << 20)
    src = np.arange(3 << 20, dtype=np.float32)
    dst = torch.zeros(3 << 20, device="cuda")
    stager.restore_into(src.view(np.uint8), [(src.view(np.uint8), dst)])
    torch.cuda.synchronize()
    assert torch.equal(dst.cpu(), torch.from_numpy(src))
