"""Manifests, packing of states, retention and placement: pure logic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from turbok.checkpoint.errors import ManifestError, UnsupportedStateError
from turbok.checkpoint.manifest import Manifest, PartKey, hash_shards, verify_shards
from turbok.checkpoint.packing import plan, unpack
from turbok.checkpoint.placement import choose_peers
from turbok.checkpoint.retention import Retention, plan_deletions
from turbok.checkpoint.testing import make_part


def _roundtrip(state: object, into: object = None) -> object:
    p = plan(state)
    buf = bytearray(p.data_size)
    p.copy_into(memoryview(buf))
    return unpack(memoryview(buf), p.manifest(PartKey("j", 1, 0), 1), into)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int8, torch.bool, torch.complex64, torch.float64])
def test_torch_tensors_round_trip_bitwise(dtype: torch.dtype) -> None:
    t = (torch.randn(33, 17) * 100).to(dtype)
    out = _roundtrip({"t": t, "nc": t.t(), "scalar": t[0, 0].clone()})
    assert isinstance(out, dict)
    for k, ref in (("t", t), ("nc", t.t()), ("scalar", t[0, 0])):
        assert out[k].dtype == dtype and out[k].shape == ref.shape
        assert torch.equal(out[k].reshape(-1).view(torch.uint8), ref.reshape(-1).view(torch.uint8)), k


def test_numpy_bytes_and_structure_round_trip() -> None:
    a = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    state = {"a": a, "strided": a[:, ::2], "raw": b"\x00\xffabc", "empty": np.zeros((0, 3)), "meta": {"lr": 0.1, "n": 3, "name": "x", "none": None, "flag": True}, "list": [1, (2, 3)], 7: "int key"}
    out = _roundtrip(state)
    assert isinstance(out, dict)
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["strided"], a[:, ::2])
    assert out["raw"] == b"\x00\xffabc" and out["empty"].shape == (0, 3)
    assert out["meta"] == state["meta"] and out["list"] == [1, (2, 3)] and out[7] == "int key"


def test_unpack_into_fills_existing_tensors_in_place() -> None:
    src = {"w": torch.randn(10, 10), "m": np.arange(6.0)}
    target = {"w": torch.zeros(10, 10), "m": np.zeros(6)}
    w, m = target["w"], target["m"]
    out = _roundtrip(src, into=target)
    assert isinstance(out, dict)
    assert out["w"] is w and torch.equal(w, src["w"])
    assert out["m"] is m and np.array_equal(m, src["m"])


def test_unsupported_objects_are_refused_with_their_path() -> None:
    with pytest.raises(UnsupportedStateError, match="opt/state"):
        plan({"opt": {"state": object()}})
    with pytest.raises(UnsupportedStateError):
        plan({"x": np.array([object()])})


def test_manifest_round_trips_and_rejects_malformed_input() -> None:
    manifest, data = make_part(PartKey("job-1", 5, 1), world_size=2)
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest and again.digest() == manifest.digest()
    assert verify_shards(memoryview(data), manifest) == []
    flipped = bytearray(data)
    flipped[manifest.shards[1].offset + 3] ^= 1
    assert [s.name for s in verify_shards(memoryview(flipped), manifest)] == [manifest.shards[1].name]
    for bad in (b"{not json", b"[]", json.dumps({"format": 1}).encode(), manifest.to_json().replace(b'"worldSize":2', b'"worldSize":1')):
        with pytest.raises(ManifestError):
            Manifest.from_json(bad)
    overlapping = manifest.to_dict()
    overlapping["shards"][1]["offset"] = 0
    with pytest.raises(ManifestError, match="overlaps"):
        Manifest.from_dict(overlapping)


def test_hashes_cover_every_byte_of_a_shard() -> None:
    manifest, data = make_part(PartKey("j", 1, 0), sizes=(10 << 20,))  # big enough for threaded hashing
    buf = bytearray(data)
    buf[(10 << 20) - 1] ^= 0x80
    assert hash_shards(memoryview(buf), manifest.shards) != [s.hash for s in manifest.shards]


@pytest.mark.parametrize("name", ["", "-x", "a/b", "x" * 200])
def test_bad_job_names_are_refused(name: str) -> None:
    with pytest.raises(ManifestError):
        PartKey(name, 1, 0)


def test_retention_never_deletes_the_newest_complete_step_or_newer() -> None:
    assert plan_deletions([10, 20, 30, 40], Retention(keep_last=1), newest_complete=40) == [10, 20, 30]
    # 40 is not complete for every rank yet: 30 (the newest complete) must stay.
    assert plan_deletions([10, 20, 30, 40], Retention(keep_last=1), newest_complete=30) == [10, 20]
    assert plan_deletions([10, 20, 30], Retention(keep_last=1), newest_complete=None) == []
    assert plan_deletions([100, 150, 200, 250, 300], Retention(keep_last=1, keep_every=100), newest_complete=300) == [150, 250]


def test_placement_is_deterministic_spreads_and_skips_self() -> None:
    peers = [f"10.0.0.{i}:7480" for i in range(8)]
    a = choose_peers("job", 3, peers, 2, self_address=peers[0])
    assert a == choose_peers("job", 3, list(reversed(peers)), 2, self_address=peers[0])
    assert len(a) == 2 and peers[0] not in a
    firsts = {choose_peers("job", r, peers, 1)[0] for r in range(64)}
    assert len(firsts) >= 5, "replicas of different ranks should land on different peers"
    # Removing a peer only moves the ranks that had chosen it.
    before = {r: choose_peers("job", r, peers, 1)[0] for r in range(64)}
    after = {r: choose_peers("job", r, peers[:-1], 1)[0] for r in range(64)}
    assert all(before[r] == after[r] for r in range(64) if before[r] != peers[-1])
    assert choose_peers("job", 0, peers[:1], 3, self_address=peers[0]) == []
