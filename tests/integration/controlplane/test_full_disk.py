"""A full disk under the home: API writes answer 507 with a Status, leave nothing half-written, and succeed
again once space is back, without a restart. The home is a small tmpfs the test mounts and unmounts."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ControlPlaneProcess

NAMESPACES = "/api/v1/namespaces"


@pytest.fixture
def small_home(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs home needs root")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(home)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the file system has no byte left."""
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        while len(chunk) >= 512:
            try:
                f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]


def namespace(name: str) -> dict[str, object]:
    # ~200 KB: more than the WAL keeps between checkpoints here, so the write needs new disk space.
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "annotations": {"payload": "x" * 200_000}}}


def test_a_full_disk_is_507_then_writes_recover(small_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURBOK_STORE_WAL_BYTES", "65536")  # keep the WAL's reusable slack small
    cp = ControlPlaneProcess(small_home).start()
    filler = small_home / "filler"
    try:
        api = httpx.Client(base_url=cp.api_url, verify=str(small_home / "pki" / "ca.crt"),
                           headers={"Authorization": f"Bearer {cp.token}"}, timeout=30)
        assert api.post(NAMESPACES, json=namespace("first")).status_code == 201
        before = api.get(NAMESPACES).json()["metadata"]["resourceVersion"]

        fill(filler)
        refused = api.post(NAMESPACES, json=namespace("full"))
        assert refused.status_code == 507, refused.text[:300]
        status = refused.json()
        assert (status["kind"], status["reason"], status["code"]) == ("Status", "InsufficientStorage", 507)
        assert "disk" in status["message"] and "full" in status["message"]
        # Nothing half-written: not served, not listed; reads keep working.
        assert api.get(f"{NAMESPACES}/full").status_code == 404
        assert "full" not in [n["metadata"]["name"] for n in api.get(NAMESPACES).json()["items"]]
        assert api.get("/readyz").status_code == 200

        filler.unlink()  # space is back: the same write succeeds, no restart
        created = api.post(NAMESPACES, json=namespace("full"))
        assert created.status_code == 201, created.text[:300]
        rv = int(created.json()["metadata"]["resourceVersion"])
        assert rv > int(before)
        # The watch from before the failure saw the object exactly once: when it was really written.
        events = []
        with api.stream("GET", NAMESPACES, params={"watch": "true", "resourceVersion": before,
                                                   "timeoutSeconds": "2"}) as stream:
            for line in stream.iter_lines():
                if line:
                    events.append(json.loads(line))
        full = [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in events
                if e["object"]["metadata"].get("name") == "full"]
        assert full == [("ADDED", str(rv))]
        api.close()

        # The revision counter committed with the rows: after a restart the object is there, versions go on.
        cp.stop()
        cp = ControlPlaneProcess(small_home).start()
        with httpx.Client(base_url=cp.api_url, verify=str(small_home / "pki" / "ca.crt"),
                          headers={"Authorization": f"Bearer {cp.token}"}, timeout=30) as again:
            assert again.get(f"{NAMESPACES}/full").json()["metadata"]["resourceVersion"] == str(rv)
            later = again.post(NAMESPACES, json={"apiVersion": "v1", "kind": "Namespace",
                                                 "metadata": {"name": "later"}})
            assert later.status_code == 201 and int(later.json()["metadata"]["resourceVersion"]) > rv
    finally:
        filler.unlink(missing_ok=True)
        cp.purge()
