"""Pulled images run in real gVisor pods through the node: entrypoint/cmd/args/user/env/workingDir as
Kubernetes applies them, whiteouts honoured inside the sandbox, ErrImagePull with the registry's words.

The image is a small userland (the host base image's busybox and libc) built and pushed here.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests import oci_registry as R
from tests.integration.images.conftest import unmount_all
from tests.integration.runtime.conftest import images_dir
from tests.unit.node.conftest import NodeHarness, container_status, pod
from turbok.api.kinds import default_registry
from turbok.node.clock import MonotonicClock
from turbok.node.node import NodeSettings
from turbok.node.suspend import runtime_id
from turbok.runtime.images import BASE_IMAGE, ImageStore
from turbok.runtime.imagestore import OciStore
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

pytestmark = pytest.mark.integration

LIB = "usr/lib/x86_64-linux-gnu"
SCRIPT = ('echo "argv=$*"; echo "uid=$(id -u) gid=$(id -g)"; echo "pwd=$(pwd)"; echo "greeting=$GREETING"; '
          'echo "data=$(ls /data)"; test -e /gone.txt && echo gone=present || echo gone=absent')


def userland(base: Path) -> R.Layer:
    """busybox and the libraries it needs, from the built base image; /bin/sh and /usr/bin/id as busybox."""
    entries = [R.d("bin"), R.d("usr"), R.d("usr/bin"), R.d("usr/lib"), R.d(LIB), R.d("lib64"), R.d("etc"),
               R.d("tmp", mode=0o1777), R.d("app"), R.d("data"), R.f("data/old", "o"), R.f("gone.txt", "x"),
               R.f("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345:app:/app:/bin/sh\n"),
               R.f("etc/group", "root:x:0:\napp:x:2345:\n"),
               R.f("bin/busybox", (base / "usr/bin/busybox").read_bytes(), mode=0o755)]
    for lib in ("libc.so.6", "libresolv.so.2"):
        entries.append(R.f(f"{LIB}/{lib}", (base / LIB / lib).read_bytes(), mode=0o755))
    entries.append(R.f("lib64/ld-linux-x86-64.so.2", (base / LIB / "ld-linux-x86-64.so.2").read_bytes(), mode=0o755))
    entries += [R.sym("bin/sh", "busybox"), R.sym("usr/bin/id", "/bin/busybox"), R.sym("bin/ls", "busybox"),
                R.sym("bin/sleep", "busybox"), R.sym("lib", "usr/lib")]
    return R.layer(entries, level=1)


@pytest.fixture
async def pulled_node(tmp_path: Path, registry: R.Registry) -> AsyncIterator[tuple[NodeHarness, str]]:
    if shutil.which("runsc") is None:
        pytest.skip("runsc (gVisor) is not installed")
    from turbok.runtime.pods_gvisor import GvisorPodRuntime

    table = ImageStore(images_dir())
    base = table.builtin_dir(BASE_IMAGE) / "rootfs"
    if not (base / "usr/bin/busybox").exists():
        pytest.skip(f"the base image is not built in {images_dir()} (scripts/setup.sh builds it)")
    img = R.image([userland(base), R.layer([R.whiteout("gone.txt"), R.d("data"), R.opaque("data"),
                                             R.f("data/new", "n")])],
                  entrypoint=["/bin/sh", "-c", SCRIPT, "sh"], cmd=["from-cmd"],
                  env=["PATH=/bin:/usr/bin", "GREETING=hello"], working_dir="/app", user="app")
    R.push(registry, "t/run", "v1", img)
    store = OciStore(tmp_path / "store")
    images = ImageStore(images_dir(), store=store)
    db = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    db.ensure_namespace("default")
    runtime = GvisorPodRuntime(tmp_path / "pods", images)
    h = NodeHarness(tmp_path, db, runtime, MonotonicClock())  # type: ignore[arg-type]
    await h.start(settings=NodeSettings(relist_seconds=0.2))
    try:
        yield h, f"{registry.host}/t/run:v1"
    finally:
        await h.stop()
        await asyncio.gather(*(runtime.remove_pod_sandbox(i) for i in await runtime.list_pod_sandboxes()),
                             return_exceptions=True)
        db.db.close()
        unmount_all(store)


def _log(h: NodeHarness, pod_name: str, container: str) -> dict[str, str]:
    got = h.pod(pod_name)
    assert got is not None
    path: Path = h.runtime.log_path(runtime_id(got), container, 0)
    lines = [line.split(" ", 3)[-1] for line in path.read_text().splitlines()] if path.exists() else []
    return dict(line.split("=", 1) for line in lines if "=" in line)


async def test_image_config_and_kubernetes_overrides(pulled_node: tuple[NodeHarness, str]) -> None:
    h, image = pulled_node
    h.create(pod("img", node=None, restartPolicy="Never", containers=[
        {"name": "plain", "image": image},
        {"name": "args", "image": image, "args": ["from-args"]},
        {"name": "command", "image": image, "command": ["/bin/sh", "-c", "echo argv=$*", "x"], "args": ["y"]},
        {"name": "user", "image": image, "securityContext": {"runAsUser": 4321}, "workingDir": "/tmp",
         "env": [{"name": "GREETING", "value": "from-pod"}]},
    ]))
    got = await h.wait_phase("img", "Succeeded", timeout=90)
    assert container_status(got, "plain")["imageID"].startswith(image.rsplit(":", 1)[0] + "@sha256:")
    plain = _log(h, "img", "plain")
    assert plain == {"argv": "from-cmd", "uid": "1234 gid=2345", "pwd": "/app", "greeting": "hello", "data": "new",
                     "gone": "absent"}, plain
    assert _log(h, "img", "args")["argv"] == "from-args"  # args replace cmd, the entrypoint stays
    assert _log(h, "img", "command") == {"argv": "y"}  # command replaces the entrypoint and drops cmd
    user = _log(h, "img", "user")
    assert user["uid"].startswith("4321 ") and user["pwd"] == "/tmp" and user["greeting"] == "from-pod"
    await h.settle()
    assert any(e["message"].startswith(f'Successfully pulled image "{image}"') for e in h.events("img", "Pulled"))


async def test_a_missing_tag_is_err_image_pull_with_the_registrys_words(
        pulled_node: tuple[NodeHarness, str]) -> None:
    h, image = pulled_node
    h.create(pod("nope", node=None, containers=[{"name": "main", "image": image.replace(":v1", ":nope")}]))
    got = await h.wait_pod("nope", lambda p: (container_status(p, "main")["state"].get("waiting") or {})
                           .get("reason") in ("ErrImagePull", "ImagePullBackOff"), timeout=30)
    assert "MANIFEST_UNKNOWN" in container_status(got, "main")["state"]["waiting"]["message"]
    await h.wait_pod("nope", lambda p: container_status(p, "main")["state"]["waiting"]["reason"] == "ImagePullBackOff",
                     timeout=10)
