"""CDI specs into container edits: env (visible-device lists joined), device nodes read from the host, mounts,
what is not honoured, and ids no spec names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from turbok.node.dra.cdi import CdiError, CdiRegistry


def test_edits_merge_env_devices_and_mounts(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({
        "cdiVersion": "0.6.0", "kind": "example.com/gpu",
        "containerEdits": {"env": ["COMMON=1"], "hooks": [{"hookName": "createContainer", "path": "/bin/true"}]},
        "devices": [{"name": "0", "containerEdits": {"env": ["EXAMPLE_VISIBLE_DEVICES=0", "X=a"],
                                                     "deviceNodes": [{"path": "/dev/example0", "hostPath": "/dev/null"}]}},
                    {"name": "1", "containerEdits": {"env": ["EXAMPLE_VISIBLE_DEVICES=1", "X=b"],
                                                     "mounts": [{"hostPath": "/opt/lib", "containerPath": "/usr/lib/x",
                                                                 "options": ["ro", "bind"]}]}}]}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"cdiVersion": "0.6.0", "kind": "other.com/nic",
                                                     "devices": [{"name": "eth", "containerEdits": {"env": ["N=1"]}}]}))
    (tmp_path / "garbage.json").write_text("{not json")
    edits = CdiRegistry([tmp_path]).edits(["example.com/gpu=0", "example.com/gpu=1", "other.com/nic=eth"])
    assert edits.env == {"COMMON": "1", "EXAMPLE_VISIBLE_DEVICES": "0,1", "X": "b", "N": "1"}
    (node,) = edits.devices
    assert (node.path, node.host_path, node.type, node.major, node.minor) == ("/dev/example0", "/dev/null", "c", 1, 3)
    (mount,) = edits.mounts
    assert (mount.host_path, mount.container_path, mount.read_only) == ("/opt/lib", "/usr/lib/x", True)
    assert edits.notes == [f"{tmp_path / 'a.json'}: CDI hooks are not honoured in a gVisor sandbox"]


def test_an_id_no_spec_names_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CdiError, match="unresolvable CDI devices example.com/gpu=9"):
        CdiRegistry([tmp_path]).edits(["example.com/gpu=9"])


def test_a_device_node_that_is_not_one_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"kind": "example.com/gpu", "devices": [
        {"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/x", "hostPath": str(tmp_path)}]}}]}))
    with pytest.raises(CdiError, match="is not a device node"):
        CdiRegistry([tmp_path]).edits(["example.com/gpu=0"])
