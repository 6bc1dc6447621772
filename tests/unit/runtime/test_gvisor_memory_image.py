"""A memory image saved by an older version (a spec without today's fields) is still resumed."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from turbok.runtime.base import SandboxSpec, sandbox_id
from turbok.runtime.gvisor import _memory_image_for
from turbok.runtime.layout import SandboxDir


def test_fields_added_since_a_hibernation_count_as_their_defaults(tmp_path: Path) -> None:
    spec = SandboxSpec(id=sandbox_id("old"), hostname="old", image="python-runtime-sandbox")
    sdir = SandboxDir(tmp_path, spec.id)
    sdir.memory_image.mkdir(parents=True)
    saved = json.loads(json.dumps(asdict(spec)))
    del saved["ephemeral_storage_bytes"]  # what a version before the disks wrote
    sdir.memory_marker.write_text(json.dumps({"spec": saved}))
    assert _memory_image_for(sdir, spec)
    # The field set to something else than its default is a changed spec: boot afresh.
    bigger = SandboxSpec(id=spec.id, hostname="old", image="python-runtime-sandbox", ephemeral_storage_bytes=2**34)
    assert not _memory_image_for(sdir, bigger)
    assert not sdir.memory_image.exists()
