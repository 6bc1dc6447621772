"""Pulling OCI images from a real registry on loopback into the machine's store, and what they become.

Every image is built and pushed here (tests/oci_registry.py); the store is fresh per test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from tests import oci_registry as R
from turbok.runtime.errors import BlobCorrupt, ImageNotPresent, ImagePullFailed, InvalidImageName
from turbok.runtime.images import ImageStore
from turbok.runtime.imagestore import OciStore
from turbok.runtime.layers import OPAQUE_XATTR
from turbok.runtime.reference import parse

pytestmark = pytest.mark.integration

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345:app:/home/app:/bin/sh\n"


def base_layer() -> R.Layer:
    return R.layer([
        R.d("etc"), R.f("etc/passwd", PASSWD), R.f("etc/group", "root:x:0:\napp:x:2345:\nstaff:x:50:\n"),
        R.f("etc/os-release", "ID=test\n"), R.d("usr"), R.d("usr/bin"),
        R.f("usr/bin/tool", "#!/bin/sh\n", mode=0o4755),  # setuid: kept, meaningless on the host
        R.d("tmp", mode=0o1777), R.d("data"), R.f("data/old-1", "1"), R.f("data/old-2", "2"),
        R.d("cache"), R.f("cache/stale", "s"), R.f("gone.txt", "bye"),
        R.sym("etc/localtime", "/usr/share/zoneinfo/UTC"),  # absolute: stored as is, resolved in the sandbox
        R.Entry("usr/bin/tool-link", "link", target="usr/bin/tool"),
        R.Entry("dev/null", raw=b"3"),  # a character device: never created
    ])


def top_layer() -> R.Layer:
    return R.layer([
        R.whiteout("gone.txt"),  # removes a file of the layer below
        R.d("data"), R.opaque("data"), R.f("data/new", "n"),  # an opaque directory: only its new entries show
        R.whiteout("cache/stale"), R.f("cache/fresh", "f"),
        R.d("app"), R.f("app/main.py", "print('hi')\n"),
    ])


def config_image(layers: list[R.Layer], **kw: object) -> R.Image:
    defaults: dict[str, object] = {"entrypoint": ["/usr/bin/tool", "--serve"], "cmd": ["--port", "80"],
                                   "env": ["PATH=/usr/bin", "GREETING=hello"], "working_dir": "/app",
                                   "user": "app"}
    defaults.update(kw)
    return R.image(layers, **defaults)  # type: ignore[arg-type]


def secret(reg: R.Registry, user: str = R.USER, password: str = R.PASSWORD) -> bytes:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {reg.host: {"auth": auth}}}).encode()


def test_pull_by_tag_gives_the_merged_root_filesystem_and_the_config(registry: R.Registry,
                                                                     images: ImageStore) -> None:
    img = config_image([base_layer(), top_layer()])
    R.push(registry, "t/app", "v1", img)
    result = images.pull(f"{registry.host}/t/app:v1")
    assert result.pulled
    r = result.image
    root = r.rootfs
    assert (root / "etc/os-release").read_text() == "ID=test\n"
    assert not (root / "gone.txt").exists()  # whiteout
    assert sorted(os.listdir(root / "data")) == ["new"]  # opaque directory
    assert sorted(os.listdir(root / "cache")) == ["fresh"]
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert os.stat(root / "usr/bin/tool").st_mode & stat.S_ISUID
    assert os.stat(root / "usr/bin/tool-link").st_ino == os.stat(root / "usr/bin/tool").st_ino
    assert not (root / "dev/null").exists()
    assert stat.S_IMODE(os.stat(root / "tmp").st_mode) == 0o1777
    # the config, and Kubernetes' view of it
    assert r.entrypoint == ("/usr/bin/tool", "--serve") and r.cmd == ("--port", "80")
    assert r.command == ("/usr/bin/tool", "--serve", "--port", "80")
    assert r.env == {"PATH": "/usr/bin", "GREETING": "hello"} and r.working_dir == "/app"
    assert (r.user, r.uid, r.gid, r.user_error) == ("app", 1234, 2345, "")
    assert r.policy_uid is None  # a named user: runAsNonRoot cannot be verified (kubelet)
    assert r.digest == f"{registry.host}/t/app@{img.digest}" and r.image_id == img.config_digest
    # the root filesystem is read-only, nosuid and nodev on the host; the store is root's alone
    opts = _mount_options(root)
    assert {"ro", "nosuid", "nodev"} <= opts
    assert stat.S_IMODE(os.stat(images.store.root).st_mode) == 0o700
    # resolve is local: the same image
    assert images.resolve(f"{registry.host}/t/app:v1").rootfs == root


def _mount_options(path: Path) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(path):
                return set(fields[5].split(","))
    raise AssertionError(f"{path} is not mounted")


def test_layers_are_unpacked_in_overlay_format(registry: R.Registry, images: ImageStore) -> None:
    img = config_image([base_layer(), top_layer()])
    R.push(registry, "t/fmt", "v1", img)
    images.pull(f"{registry.host}/t/fmt:v1")
    top = images.store.layer_path(img.layers[1].diff_id)
    st = os.lstat(top / "gone.txt")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(top / "data", OPAQUE_XATTR) == b"y"


def test_pull_by_digest_and_a_second_pull_costs_no_network(registry: R.Registry, images: ImageStore) -> None:
    img = config_image([base_layer()], user="1234:50")
    digest = R.push(registry, "t/digest", "v1", img)
    ref = f"{registry.host}/t/digest@{digest}"
    r = images.pull(ref).image
    assert (r.uid, r.gid, r.policy_uid) == (1234, 50, 1234)
    before = registry.requests()
    again = images.pull(ref)  # IfNotPresent (a digest): present, so nothing is asked
    assert not again.pulled and again.image.rootfs == r.rootfs
    assert registry.requests() == before
    # the tag was never pulled here: its manifest is asked for, no blob (all are here)
    blobs = registry.blob_gets()
    assert images.pull(f"{registry.host}/t/digest:v1", policy="IfNotPresent").pulled is False
    assert registry.blob_gets() == blobs
    before = registry.requests()
    assert images.pull(f"{registry.host}/t/digest:v1").pulled is False
    assert registry.requests() == before
    # Always asks the registry what the tag is now, and fetches no blob it has
    blobs = registry.blob_gets()
    always = images.pull(f"{registry.host}/t/digest:v1", policy="Always")
    assert registry.requests() > before and registry.blob_gets() == blobs and not always.pulled


def test_never_and_absent_and_bad_names(registry: R.Registry, images: ImageStore) -> None:
    with pytest.raises(ImageNotPresent, match="not present with pull policy of Never"):
        images.pull(f"{registry.host}/t/nothing:v1", policy="Never")
    with pytest.raises(ImageNotPresent):
        images.resolve(f"{registry.host}/t/nothing:v1")
    with pytest.raises(InvalidImageName, match="couldn't parse image name"):
        images.pull(f"{registry.host}/T/Upper:v1")
    with pytest.raises(ImagePullFailed, match="MANIFEST_UNKNOWN") as info:
        images.pull(f"{registry.host}/t/nothing:v1")
    assert info.value.status == 404


def test_shared_layers_are_fetched_once(registry: R.Registry, images: ImageStore) -> None:
    base = base_layer()
    R.push(registry, "t/one", "v1", config_image([base]))
    R.push(registry, "t/two", "v1", config_image([base, top_layer()]))
    images.pull(f"{registry.host}/t/one:v1")
    before = registry.blob_gets()
    images.pull(f"{registry.host}/t/two:v1")
    assert registry.blob_gets() - before == 2  # its config and its top layer; the base layer is here
    layers = [p for p in images.store.layers_dir.iterdir() if p.is_dir()]
    assert len(layers) == 2


def test_basic_auth_with_a_pull_secret(basic_registry: R.Registry, images: ImageStore) -> None:
    reg = basic_registry
    R.push(reg, "t/private", "v1", config_image([base_layer()]))
    ref = f"{reg.host}/t/private:v1"
    with pytest.raises(ImagePullFailed, match="asks for a login") as info:
        images.pull(ref)
    assert info.value.status == 401
    wrong = secret(reg, password="not-the-password")
    with pytest.raises(ImagePullFailed, match="401") as info:
        images.pull(ref, pull_secrets=[wrong])
    assert "not-the-password" not in str(info.value)
    other = json.dumps({"auths": {"elsewhere.example": {"auth": "eDp5"}}}).encode()
    r = images.pull(ref, pull_secrets=[other, wrong, secret(reg)]).image  # tried in turn
    assert (r.rootfs / "etc/os-release").exists()


def test_bearer_token_auth(token_registry: R.Registry, images: ImageStore) -> None:
    reg = token_registry
    R.push(reg, "t/tok", "v1", config_image([base_layer()]))
    ref = f"{reg.host}/t/tok:v1"
    with pytest.raises(ImagePullFailed, match="getting a token.*401"):
        images.pull(ref)  # the token server wants a login
    with pytest.raises(ImagePullFailed):
        images.pull(ref, pull_secrets=[secret(reg, password="wrong")])
    r = images.pull(ref, pull_secrets=[secret(reg)]).image
    assert (r.rootfs / "etc/os-release").exists()


def test_multi_arch_index_picks_this_machine(registry: R.Registry, images: ImageStore) -> None:
    amd = config_image([R.layer([R.f("arch", "amd64")])], arch="amd64")
    arm = config_image([R.layer([R.f("arch", "arm64")])], arch="arm64")
    index = R.push_index(registry, "t/multi", "v1", [("linux", "arm64", arm), ("linux", "amd64", amd)])
    r = images.pull(f"{registry.host}/t/multi:v1").image
    assert (r.rootfs / "arch").read_text() == "amd64"
    assert r.digest == f"{registry.host}/t/multi@{index}"
    # by the index's digest, locally
    assert images.resolve(f"{registry.host}/t/multi@{index}").rootfs == r.rootfs
    R.push_index(registry, "t/armonly", "v1", [("linux", "arm64", arm)])
    with pytest.raises(ImagePullFailed, match="no linux/amd64 image in its index .*linux/arm64"):
        images.pull(f"{registry.host}/t/armonly:v1")


def test_a_corrupted_blob_is_refused_and_nothing_is_kept(registry: R.Registry, images: ImageStore) -> None:
    good = config_image([R.layer([R.f("payload", os.urandom(4096).hex())])])
    R.push(registry, "t/corrupt", "v1", good)
    blob = registry.blob_path(good.layers[0].digest)
    original = blob.read_bytes()
    # same size, valid gzip of other bytes: only the digest can tell
    evil = R.layer([R.f("payload", os.urandom(4096).hex())]).blob
    blob.write_bytes(evil[: len(original)].ljust(len(original), b"\0"))
    try:
        with pytest.raises(BlobCorrupt, match="corrupted in the registry or on the way, refused"):
            images.pull(f"{registry.host}/t/corrupt:v1")
        store = images.store
        assert not any(p.is_dir() for p in store.layers_dir.iterdir())
        assert not [p for p in store.tmp.iterdir() if p.suffix != ".lock"]
        with pytest.raises(ImageNotPresent):
            images.resolve(f"{registry.host}/t/corrupt:v1")
    finally:
        blob.write_bytes(original)
    assert (images.pull(f"{registry.host}/t/corrupt:v1").image.rootfs / "payload").exists()


class CuttingProxy:
    """A loopback TCP proxy to the registry that drops a blob download after ``budget`` response bytes."""

    def __init__(self, target: str, budget: int) -> None:
        self.target = target.split(":")
        self.budget = budget
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.cut = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        upstream = socket.create_connection((self.target[0], int(self.target[1])))
        blob = threading.Event()

        def up() -> None:
            while data := client.recv(65536):
                if b"/blobs/" in data:
                    blob.set()
                upstream.sendall(data)

        threading.Thread(target=up, daemon=True).start()
        sent = 0
        try:
            while data := upstream.recv(65536):
                if blob.is_set() and sent + len(data) > self.budget:
                    client.sendall(data[: max(0, self.budget - sent)])
                    self.cut.set()
                    break
                if blob.is_set():
                    sent += len(data)
                client.sendall(data)
        finally:
            for s in (client, upstream):  # shutdown first: the other thread blocked in recv must see the end
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.sock.close()


def test_an_interrupted_pull_resumes_where_it_stopped(registry: R.Registry, images: ImageStore,
                                                      tmp_path: Path) -> None:
    big = R.layer([R.f("blob.bin", os.urandom(6 << 20))], level=1)  # incompressible: 6 MiB on the wire
    img = config_image([big])
    R.push(registry, "t/big", "v1", img)
    proxy = CuttingProxy(registry.host, budget=2 << 20)
    try:
        with pytest.raises(ImagePullFailed, match="connection lost|fetching layer"):
            images.pull(f"{proxy.host}/t/big:v1")
    finally:
        proxy.close()
    assert proxy.cut.is_set()
    partial = images.store.tmp / f"{img.layers[0].digest.split(':')[1]}.partial"
    have = partial.stat().st_size
    assert 0 < have <= 2 << 20
    log_before = registry.log.read_text()
    r = images.pull(f"{registry.host}/t/big:v1").image
    assert (r.rootfs / "blob.bin").stat().st_size == 6 << 20
    new_lines = registry.log.read_text()[len(log_before):].splitlines()
    blob_lines = [line for line in new_lines if f"/blobs/{img.layers[0].digest}" in line and '"GET' in line]
    assert blob_lines and '" 206 ' in blob_lines[-1], blob_lines
    sent = int(blob_lines[-1].split('" 206 ')[1].split()[0])
    assert sent == len(img.layers[0].blob) - have  # only the rest travelled
    assert not partial.exists()


def test_rm_and_prune_collect_what_no_image_needs(registry: R.Registry, images: ImageStore) -> None:
    base = base_layer()
    R.push(registry, "t/keep", "v1", config_image([base]))
    R.push(registry, "t/drop", "v1", config_image([base, top_layer()]))
    store: OciStore = images.store
    images.pull(f"{registry.host}/t/keep:v1")
    images.pull(f"{registry.host}/t/drop:v1")
    gone = store.remove(parse(f"{registry.host}/t/drop:v1"))
    assert f"{registry.host}/t/drop:v1" in gone
    assert [p.name for p in store.layers_dir.iterdir() if p.is_dir()] == [base.diff_id.split(":")[1]]
    (store.tmp / ("0" * 64 + ".partial")).write_bytes(b"left over")
    result = store.prune()
    assert result.bytes >= len(b"left over") and not (store.tmp / ("0" * 64 + ".partial")).exists()
    assert images.resolve(f"{registry.host}/t/keep:v1").rootfs.is_dir()
    result = store.prune(all_unused=True)
    assert result.images and not store.images()
    assert not [p for p in store.layers_dir.iterdir()]


def test_a_hostile_layer_is_refused_with_a_clear_status(registry: R.Registry, images: ImageStore,
                                                       tmp_path: Path) -> None:
    target = tmp_path / "host-dir"
    target.mkdir()
    evil = config_image([R.layer([R.f("ok", "fine"), R.sym("link", str(target)), R.f("link/planted", "evil")])])
    R.push(registry, "t/evil", "v1", evil)
    with pytest.raises(ImagePullFailed, match="goes through a symlink: refused") as info:
        images.pull(f"{registry.host}/t/evil:v1")
    assert type(info.value).__name__ == "UnsafeLayer"
    assert os.listdir(target) == []
    assert not any(p.is_dir() for p in images.store.layers_dir.iterdir())
    assert not [p for p in images.store.tmp.iterdir() if p.suffix != ".lock"]


def test_zstd_and_uncompressed_layers(registry: R.Registry, images: ImageStore) -> None:
    img = config_image([R.layer([R.f("a", "zstd")], compression="zstd"), R.layer([R.f("b", "plain")],
                                                                                  compression="none")])
    R.push(registry, "t/zstd", "v1", img)
    root = images.pull(f"{registry.host}/t/zstd:v1").image.rootfs
    assert (root / "a").read_text() == "zstd" and (root / "b").read_text() == "plain"


def test_homes_share_one_store_and_concurrent_pulls_fetch_once(registry: R.Registry, store: OciStore,
                                                               tmp_path: Path) -> None:
    img = config_image([base_layer(), R.layer([R.f("big", os.urandom(1 << 20))], level=1)])
    R.push(registry, "t/shared", "v1", img)
    homes = []
    for name in ("home-a", "home-b", "home-c"):
        (tmp_path / name).mkdir()
        homes.append(ImageStore(tmp_path / name, store=OciStore(store.root)))  # each home's own view
    before = registry.blob_gets()
    results: list[object] = []
    threads = [threading.Thread(target=lambda h=h: results.append(h.pull(f"{registry.host}/t/shared:v1")))
               for h in homes[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    assert registry.blob_gets() - before <= 2 + 2  # each layer once (config fetched by each pull at most)
    layer_gets = [line for line in registry.log.read_text().splitlines()
                  if f"/blobs/{img.layers[1].digest}" in line and '"GET' in line]
    assert len(layer_gets) == 1
    requests = registry.requests()
    third = homes[2].pull(f"{registry.host}/t/shared:v1")
    assert not third.pulled and registry.requests() == requests  # present for every home
