"""`turbok image pull|ls|rm|prune` against a registry on loopback, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import oci_registry as R
from tests.integration.images.conftest import unmount_all
from tests.integration.images.test_pull import base_layer, config_image, secret, top_layer
from turbok.runtime.imagestore import OciStore

pytestmark = pytest.mark.integration


def turbok(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TURBOK_IMAGE_STORE": str(store), "COLUMNS": "200"}
    env.pop("REGISTRY_AUTH_FILE", None)
    return subprocess.run([sys.executable, "-m", "turbok", "image", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_pull_ls_rm_prune(registry: R.Registry, tmp_path: Path) -> None:
    store = tmp_path / "store"
    R.push(registry, "t/cli", "v1", config_image([base_layer(), top_layer()]))
    R.push(registry, "t/cli2", "v1", config_image([base_layer()]))
    try:
        done = turbok(store, "pull", f"{registry.host}/t/cli:v1")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"pulled {registry.host}/t/cli:v1 (")
        again = turbok(store, "pull", f"{registry.host}/t/cli:v1")
        assert again.returncode == 0 and "is present" in again.stdout
        assert turbok(store, "pull", "-q", f"{registry.host}/t/cli2:v1").returncode == 0
        rows = json.loads(turbok(store, "ls", "-o", "json").stdout)
        pulled = {r["name"]: r for r in rows if r["kind"] == "pulled"}
        assert set(pulled) == {f"{registry.host}/t/cli:v1", f"{registry.host}/t/cli2:v1"}
        assert pulled[f"{registry.host}/t/cli:v1"]["layers"] == 2
        assert any(r["kind"] == "built-in" for r in rows)
        table = turbok(store, "ls").stdout
        assert f"{registry.host}/t/cli:v1" in table and "python-runtime-sandbox" in table
        resolved = turbok(store, "resolve", f"{registry.host}/t/cli:v1")
        assert "entrypoint:" in resolved.stdout and "user: app" in resolved.stdout
        done = turbok(store, "rm", f"{registry.host}/t/cli:v1")
        assert done.returncode == 0 and f"untagged {registry.host}/t/cli:v1" in done.stdout
        missing = turbok(store, "rm", f"{registry.host}/t/cli:v1")
        assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1
        done = turbok(store, "prune", "--all")
        assert done.returncode == 0 and "removed 1 images" in done.stdout
        assert OciStore(store).images() == []
    finally:
        unmount_all(OciStore(store))


def test_authfile_must_be_private_and_is_never_printed(basic_registry: R.Registry, tmp_path: Path) -> None:
    reg = basic_registry
    store = tmp_path / "store"
    R.push(reg, "t/auth", "v1", config_image([base_layer()]))
    auth = tmp_path / "auth.json"
    auth.write_bytes(secret(reg))
    auth.chmod(0o644)
    try:
        done = turbok(store, "pull", "--authfile", str(auth), f"{reg.host}/t/auth:v1")
        assert done.returncode != 0 and "chmod 600" in done.stderr
        done = turbok(store, "pull", f"{reg.host}/t/auth:v1")
        assert done.returncode != 0 and "asks for a login" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        auth.chmod(0o600)
        done = turbok(store, "pull", "--authfile", str(auth), f"{reg.host}/t/auth:v1")
        assert done.returncode == 0, done.stderr
        assert R.PASSWORD not in done.stdout + done.stderr
    finally:
        unmount_all(OciStore(store))
