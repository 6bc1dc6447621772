"""Tensors on an accelerator: device-to-host copies that overlap training, restores into device memory.

``DeviceStager`` holds the logic; a ``Backend`` holds the device calls.
``CudaBackend`` drives torch.cuda; ``SimulatedBackend`` runs the same calls
on the CPU (streams are worker threads, events are threading.Events, "device
tensors" are CPU tensors it was told about), so the logic is tested on
machines without a GPU. No GPU was available where this was written: the CUDA
path was not run (docs/checkpoint.md, bench/checkpoint_gpu.py).

Save (``snapshot``), called by ``save()`` with the memory tier's buffer:

1. record an event on the current (training) stream and make a side stream
   wait for it, so the copies see the state as of ``save()``;
2. if the buffer could be registered as pinned host memory (once per mapping:
   buffers are pooled and reused, so this is paid once per buffer), queue one
   asynchronous device-to-host copy per tensor straight into it on the side
   stream: no staging memory at all;
3. otherwise pipeline the copies through ``staging_buffers`` pinned buffers
   of ``chunk`` bytes, reused forever: the side stream fills one while a
   host thread moves the previous into the memory tier;
4. return at once; ``fence()`` (called by the optimizer step hook of
   saving.py) makes the training stream wait, on the device, for the copies
   before anything modifies the tensors, so forward and backward overlap the
   copy and the host never blocks.

Restore (``restore_into``): the memory-tier buffer is registered (or staged
in chunks) and copied straight into the caller's device tensors on the side
stream; the training stream waits for it. No host-side tensor is made.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["Backend", "CudaBackend", "DeviceSnapshot", "DeviceStager", "SimulatedBackend"]

log = logging.getLogger(__name__)


class Backend(Protocol):
    """The device calls the stager needs."""

    name: str

    def is_device(self, tensor: Any) -> bool: ...
    def register(self, host: np.ndarray) -> bool: ...  # pin ``host`` for async copies; False if it cannot
    def pinned(self, nbytes: int) -> np.ndarray: ...  # a new pinned uint8 host buffer
    def new_stream(self) -> Any: ...
    def current_event(self) -> Any: ...  # an event recorded on the current stream now
    def stream_wait(self, stream: Any, event: Any) -> None: ...
    def record(self, stream: Any) -> Any: ...  # an event after the work queued on ``stream`` so far
    def current_wait(self, event: Any) -> None: ...  # the current stream waits for ``event`` (device side)
    def synchronize(self, event: Any) -> None: ...  # the host waits for ``event``
    def to_host(self, src: Any, dst: np.ndarray, stream: Any, *, offset: int = 0, nbytes: int = -1) -> None: ...
    def to_device(self, src: np.ndarray, dst: Any, stream: Any, *, offset: int = 0) -> None: ...


class DeviceSnapshot:
    """The copies of one save. ``wait()``: the bytes are in host memory; ``fence()``: the
    current stream waits for them on the device.

    On the pinned path every copy is queued at once (``event`` is known). On the staged
    path the copies are queued by ``_queue`` chunk by chunk as the host drains the staging
    buffers; whoever needs the final event first (the stager's thread, or a fence) runs it,
    once, and the other waits for it.
    """

    def __init__(self, stager: DeviceStager, event: Any = None, queue: Callable[[], Any] | None = None) -> None:
        self.stager, self.event, self._queue = stager, event, queue
        self._lock = threading.Lock()
        self._fenced = False

    def _queued(self) -> Any:
        with self._lock:
            if self._queue is not None:
                queue_all, self._queue = self._queue, None
                self.event = queue_all()
            return self.event

    def wait(self) -> None:
        self.stager.backend.synchronize(self._queued())

    def fence(self) -> None:
        event = self._queued()
        with self._lock:
            if self._fenced:
                return
            self._fenced = True
        self.stager.backend.current_wait(event)


class DeviceStager:
    """Device-to-host snapshots and host-to-device restores through reused pinned memory."""

    def __init__(self, backend: Backend, *, chunk: int = 64 << 20, staging_buffers: int = 2) -> None:
        self.backend = backend
        self.chunk = chunk
        self.stream = backend.new_stream()
        self._staging: list[np.ndarray] = []
        self._staging_count = staging_buffers
        self._registered: dict[int, bool] = {}  # buffer address -> registered as pinned
        self._lock = threading.Lock()
        self.pending: list[DeviceSnapshot] = []

    # -- pinned memory ----------------------------------------------------------------------------
    def _pinned(self, buf: np.ndarray) -> bool:
        addr = int(buf.ctypes.data)
        with self._lock:
            if addr not in self._registered:
                self._registered[addr] = self.backend.register(buf)
            return self._registered[addr]

    def staging(self) -> list[np.ndarray]:
        with self._lock:
            if not self._staging:
                self._staging = [self.backend.pinned(self.chunk) for _ in range(self._staging_count)]
            return self._staging

    # -- save -------------------------------------------------------------------------------------
    def snapshot(self, buffer: np.ndarray, copies: Sequence[tuple[Any, int, int]]) -> DeviceSnapshot:
        """Queue the copy of each (device tensor, offset, nbytes) into ``buffer`` (the part's blob)."""
        b = self.backend
        b.stream_wait(self.stream, b.current_event())
        if self._pinned(buffer):
            for tensor, offset, nbytes in copies:
                b.to_host(tensor, buffer[offset : offset + nbytes], self.stream)
            snap = DeviceSnapshot(self, b.record(self.stream))
        else:
            snap = self._staged_snapshot(buffer, copies)
        with self._lock:
            self.pending.append(snap)
        return snap

    def _staged_snapshot(self, buffer: np.ndarray, copies: Sequence[tuple[Any, int, int]]) -> DeviceSnapshot:
        """Chunks through the pinned staging buffers: the device fills one while the host drains another."""
        b = self.backend
        staging = self.staging()
        pieces = [(t, off, pos, min(self.chunk, n - pos)) for t, off, n in copies for pos in range(0, n, self.chunk)]

        def queue_all() -> Any:
            in_slot: list[tuple[Any, int, int] | None] = [None] * len(staging)  # (event, blob offset, bytes)

            def drain(slot: int) -> None:
                held = in_slot[slot]
                if held is not None:
                    event, dst, n = held
                    b.synchronize(event)
                    np.copyto(buffer[dst : dst + n], staging[slot][:n])
                    in_slot[slot] = None

            for i, (tensor, off, pos, n) in enumerate(pieces):
                slot = i % len(staging)
                drain(slot)  # reuse: the host has moved its previous chunk out
                b.to_host(tensor, staging[slot][:n], self.stream, offset=pos, nbytes=n)
                in_slot[slot] = (b.record(self.stream), off + pos, n)
            for slot in range(len(staging)):
                drain(slot)
            return b.record(self.stream)

        return DeviceSnapshot(self, None, queue_all)

    def fence(self) -> None:
        """Make the current stream wait for every snapshot queued so far (device side)."""
        with self._lock:
            pending, self.pending = self.pending, []
        for snap in pending:
            snap.fence()

    # -- restore ----------------------------------------------------------------------------------
    def restore_into(self, buffer: np.ndarray, copies: Sequence[tuple[np.ndarray, Any]]) -> None:
        """Copy host bytes (views of ``buffer``) into device tensors; the current stream waits for them."""
        b = self.backend
        b.stream_wait(self.stream, b.current_event())
        if self._pinned(buffer):
            for src, dst in copies:
                b.to_device(src, dst, self.stream)
        else:
            staging = self.staging()
            last: list[Any] = [None] * len(staging)
            i = 0
            for src, dst in copies:
                for pos in range(0, src.nbytes, self.chunk):
                    n = min(self.chunk, src.nbytes - pos)
                    slot = i % len(staging)
                    if last[slot] is not None:
                        b.synchronize(last[slot])  # the device has read this staging buffer
                    np.copyto(staging[slot][:n], src[pos : pos + n])
                    b.to_device(staging[slot][:n], dst, self.stream, offset=pos)
                    last[slot] = b.record(self.stream)
                    i += 1
        b.current_wait(b.record(self.stream))


class CudaBackend:
    """torch.cuda; the tmpfs buffers are pinned with cudaHostRegister."""

    name = "cuda"

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def is_device(self, tensor: Any) -> bool:
        return bool(getattr(tensor, "is_cuda", False))

    def register(self, host: np.ndarray) -> bool:
        cudart = self.torch.cuda.cudart()  # type: ignore[no-untyped-call]
        rc = cudart.cudaHostRegister(int(host.ctypes.data), int(host.nbytes), 0)
        ok = int(rc) == 0
        if not ok:
            log.warning("checkpoint: cudaHostRegister failed (%s); staging through pinned buffers", rc)
        return ok

    def pinned(self, nbytes: int) -> np.ndarray:
        buf: np.ndarray = self.torch.empty(nbytes, dtype=self.torch.uint8, pin_memory=True).numpy()
        return buf

    def new_stream(self) -> Any:
        return self.torch.cuda.Stream()  # type: ignore[no-untyped-call]

    def current_event(self) -> Any:
        ev = self.torch.cuda.Event()  # type: ignore[no-untyped-call]
        ev.record(self.torch.cuda.current_stream())
        return ev

    def stream_wait(self, stream: Any, event: Any) -> None:
        stream.wait_event(event)

    def record(self, stream: Any) -> Any:
        ev = self.torch.cuda.Event()  # type: ignore[no-untyped-call]
        ev.record(stream)
        return ev

    def current_wait(self, event: Any) -> None:
        self.torch.cuda.current_stream().wait_event(event)

    def synchronize(self, event: Any) -> None:
        event.synchronize()

    def to_host(self, src: Any, dst: np.ndarray, stream: Any, *, offset: int = 0, nbytes: int = -1) -> None:
        torch = self.torch
        flat = src.detach().reshape(-1).view(torch.uint8)
        if nbytes >= 0:
            flat = flat[offset : offset + nbytes]
        with torch.cuda.stream(stream):
            torch.from_numpy(dst).copy_(flat, non_blocking=True)
        src.record_stream(stream)

    def to_device(self, src: np.ndarray, dst: Any, stream: Any, *, offset: int = 0) -> None:
        torch = self.torch
        flat = dst.detach().reshape(-1).view(torch.uint8)[offset : offset + src.nbytes]
        with torch.cuda.stream(stream):
            flat.copy_(torch.from_numpy(src), non_blocking=True)
        dst.record_stream(stream)


class _SimStream:
    """A stream: work runs in order on a thread of its own."""

    def __init__(self, name: str) -> None:
        self.work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=f"sim-stream-{name}", daemon=True).start()

    def _run(self) -> None:
        while True:
            self.work.get()()

    def submit(self, fn: Callable[[], None]) -> None:
        self.work.put(fn)


class SimulatedBackend:
    """A device simulated on the CPU, for tests: the same calls, with streams as threads.

    ``mark(tensor)`` makes a CPU tensor count as a device tensor; ``launch(fn)`` runs ``fn`` on
    the current (training) stream, as a kernel would; ``copy_delay`` slows every copy so tests
    can see what overlaps; ``registered`` and ``allocated`` count pinned registrations and buffers.
    """

    name = "simulated"

    def __init__(self, *, copy_delay: float = 0.0, can_register: bool = True) -> None:
        self.copy_delay = copy_delay
        self.can_register = can_register
        self.current = _SimStream("current")
        self._device: set[int] = set()  # storage addresses of "device" tensors (views and detach() share them)
        self.registered = 0
        self.allocated = 0
        self.log: list[str] = []
        self._lock = threading.Lock()

    def mark(self, tensor: Any) -> Any:
        self._device.add(int(tensor.untyped_storage().data_ptr()))
        return tensor

    def is_device(self, tensor: Any) -> bool:
        storage = getattr(tensor, "untyped_storage", None)
        return storage is not None and int(storage().data_ptr()) in self._device

    def launch(self, fn: Callable[[], None]) -> None:
        self.current.submit(fn)

    def register(self, host: np.ndarray) -> bool:
        with self._lock:
            self.registered += 1
        return self.can_register

    def pinned(self, nbytes: int) -> np.ndarray:
        with self._lock:
            self.allocated += 1
        return np.zeros(nbytes, dtype=np.uint8)

    def new_stream(self) -> _SimStream:
        return _SimStream("side")

    def _event_on(self, stream: _SimStream) -> threading.Event:
        ev = threading.Event()
        stream.submit(ev.set)
        return ev

    def current_event(self) -> threading.Event:
        return self._event_on(self.current)

    def stream_wait(self, stream: _SimStream, event: threading.Event) -> None:
        stream.submit(lambda: None if event.wait() else None)

    def record(self, stream: _SimStream) -> threading.Event:
        return self._event_on(stream)

    def current_wait(self, event: threading.Event) -> None:
        self.current.submit(lambda: None if event.wait() else None)

    def synchronize(self, event: threading.Event) -> None:
        event.wait()

    def _note(self, what: str) -> None:
        with self._lock:
            self.log.append(what)

    def to_host(self, src: Any, dst: np.ndarray, stream: _SimStream, *, offset: int = 0, nbytes: int = -1) -> None:
        import time

        def copy() -> None:
            time.sleep(self.copy_delay)
            raw = src.detach().reshape(-1).view(__import__("torch").uint8).numpy()
            n = dst.nbytes if nbytes < 0 else nbytes
            np.copyto(dst[:n], raw[offset : offset + n])
            self._note("to_host")

        stream.submit(copy)

    def to_device(self, src: np.ndarray, dst: Any, stream: _SimStream, *, offset: int = 0) -> None:
        import time

        data = src.copy() if not src.flags.writeable else src  # staging slots are reused after the event

        def copy() -> None:
            time.sleep(self.copy_delay)
            raw = dst.detach().reshape(-1).view(__import__("torch").uint8).numpy()
            np.copyto(raw[offset : offset + data.nbytes], data)
            self._note("to_device")

        stream.submit(copy)

    def drain(self) -> None:
        """Wait until the current stream has run everything queued so far."""
        self.synchronize(self.current_event())
