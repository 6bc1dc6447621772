"""Benchmark of image pulls: turbok's pull + unpack against ``skopeo copy`` of the same image.

The image is the built-in base image's userland (Debian bookworm minbase + python3, about
180 MB and 7,800 files unpacked) cut into three gzip layers (``usr/lib``; the rest; a small top
layer with a whiteout), pushed to Debian's ``docker-registry`` on loopback (tests/oci_registry.py).
Each round, alternating, from a cold store/destination each time (the page cache stays warm):

1. reference: ``skopeo copy docker://... oci:DIR`` (fetch + verify + write the blobs, no unpack);
2. turbok: ``OciStore.pull`` (fetch + verify + gunzip + unpack every layer, in parallel threads);
3. the alternatives the design was chosen against: ``skopeo copy`` then ``umoci raw unpack``
   (Debian's tools, one flattened tree per image), and turbok's own unpacker run per image
   (the layers one after the other into one tree) instead of per layer in parallel;
4. both again through a loopback proxy that paces responses to ``--link`` MB/s shared by all
   connections (default 50: a fast internet link), where the transfer rather than this VM's disk
   sets the pace;
5. a second pull of the cached image (``ImageStore.pull``, IfNotPresent): registry requests counted
   from its access log (must be 0);
6. a second image sharing the two big layers: what a per-layer store fetches and unpacks (the top
   layer) against a per-image one (everything again).

Usage (root; docker-registry, skopeo, umoci; the base image built)::

    .venv/bin/python bench/images.py [--rounds 5] [--link 50]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import oci_registry as R  # noqa: E402
from turbok.runtime import mounts  # noqa: E402
from turbok.runtime.images import BASE_IMAGE, ImageStore, default_images_dir  # noqa: E402
from turbok.runtime.imagestore import OciStore  # noqa: E402
from turbok.runtime.layers import unpack  # noqa: E402
from turbok.runtime.reference import parse  # noqa: E402


def tar_gz(root: Path, out: Path, *args: str) -> None:
    with open(out, "wb") as f:
        tar = subprocess.Popen(["tar", "-C", str(root), "-cf", "-", *args], stdout=subprocess.PIPE)
        subprocess.run(["gzip", "-6", "-n"], stdin=tar.stdout, stdout=f, check=True)
        tar.wait()


def clean_store(store: OciStore) -> None:
    if store.images_dir.is_dir():
        for entry in store.images_dir.iterdir():
            if mounts.is_mount_root(entry / "rootfs"):
                mounts.unmount(entry / "rootfs", lazy=False)
    shutil.rmtree(store.root, ignore_errors=True)


class Link:
    """A loopback TCP proxy to the registry whose responses share one ``rate`` (bytes/s): a network link."""

    def __init__(self, target: str, rate: float) -> None:
        import socket
        import threading

        self.target = (target.split(":")[0], int(target.split(":")[1]))
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = time.monotonic()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _send(self, sock: object, data: bytes) -> None:
        with self.lock:  # each chunk takes its turn on the link
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + len(data) / self.rate
        if self.next_free > now:
            time.sleep(self.next_free - now)
        sock.sendall(data)  # type: ignore[attr-defined]

    def _pipe(self, client: object) -> None:
        import socket
        import threading

        upstream = socket.create_connection(self.target)

        def up() -> None:
            try:
                while data := client.recv(65536):  # type: ignore[attr-defined]
                    upstream.sendall(data)
            except OSError:
                pass

        threading.Thread(target=up, daemon=True).start()
        try:
            while data := upstream.recv(65536):
                self._send(client, data)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
                s.close()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.sock.close()


def timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--link", type=float, default=50.0, help="MB/s of the simulated link (step 4)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (unpacking layers, mounts)")
    for tool in ("docker-registry", "skopeo", "umoci"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (scripts/setup.sh installs it)")
    base = ImageStore(default_images_dir()).builtin_dir(BASE_IMAGE) / "rootfs"
    if not (base / "usr/lib").is_dir():
        sys.exit(f"the base image is not built in {base} (turbok image build-base)")
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    work = Path(tempfile.mkdtemp(prefix="bench-images-"))
    try:
        tar_gz(base, work / "l1.tar.gz", "usr/lib")
        tar_gz(base, work / "l2.tar.gz", "--exclude=./usr/lib", ".")
        l1, l2 = R.layer_from_tar_gz(work / "l1.tar.gz"), R.layer_from_tar_gz(work / "l2.tar.gz")
        top = R.layer([R.whiteout("etc/motd"), R.d("app"), R.f("app/main.py", "print('hi')\n")])
        img = R.image([l1, l2, top], cmd=["python3"])
        other = R.image([l1, l2, R.layer([R.f("app/other.py", "print('other')\n")])], cmd=["python3"])
        size = img.size
        files = sum(1 for _ in base.rglob("*"))
        print(f"image: 3 layers, {size / 1e6:.1f} MB compressed, {files} files unpacked")
        with R.registry(work / "registry") as reg:
            R.push(reg, "bench/py", "v1", img)
            R.push(reg, "bench/other", "v1", other)
            src = f"docker://{reg.host}/bench/py:v1"
            results: dict[str, list[float]] = {k: [] for k in ("skopeo", "turbok", "umoci", "per-image",
                                                               "turbok-1-thread", "skopeo-link", "turbok-link")}
            store = OciStore(work / "store")
            dest, bundle, flat = work / "oci", work / "bundle", work / "flat"
            for i in range(args.rounds):
                shutil.rmtree(dest, ignore_errors=True)
                results["skopeo"].append(timed(lambda: subprocess.run(
                    ["skopeo", "copy", "-q", "--src-tls-verify=false", src, f"oci:{dest}:v1"], check=True)))
                clean_store(store)
                results["turbok"].append(timed(lambda: store.pull(parse(f"{reg.host}/bench/py:v1"))))
                if i < 2:  # the alternatives, fewer times
                    shutil.rmtree(bundle, ignore_errors=True)
                    shutil.rmtree(dest, ignore_errors=True)

                    def skopeo_umoci() -> None:
                        subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", src, f"oci:{dest}:v1"],
                                       check=True)
                        subprocess.run(["umoci", "raw", "unpack", "--image", f"{dest}:v1", str(bundle)], check=True,
                                       capture_output=True)

                    results["umoci"].append(timed(skopeo_umoci))
                    shutil.rmtree(flat, ignore_errors=True)

                    def per_image() -> None:  # the same unpacker, layers in order into one tree (no network)
                        from isal import igzip

                        for layer in (l1, l2, top):
                            flat.mkdir(exist_ok=True)
                            with igzip.GzipFile(fileobj=io.BytesIO(layer.blob)) as g:
                                unpack(g, flat)  # type: ignore[arg-type]

                    results["per-image"].append(timed(per_image))
                    import turbok.runtime.imagestore as ims

                    clean_store(store)
                    ims.PARALLEL_LAYERS = 1
                    results["turbok-1-thread"].append(timed(lambda: store.pull(parse(f"{reg.host}/bench/py:v1"))))
                    ims.PARALLEL_LAYERS = 3
            # through a link of --link MB/s (a fast network), where the transfer, not the disk, sets the pace
            link = Link(reg.host, args.link * 1e6)
            lsrc = f"docker://{link.host}/bench/py:v1"
            for _ in range(max(2, args.rounds // 2)):
                shutil.rmtree(dest, ignore_errors=True)
                results["skopeo-link"].append(timed(lambda: subprocess.run(
                    ["skopeo", "copy", "-q", "--src-tls-verify=false", lsrc, f"oci:{dest}:v1"], check=True)))
                clean_store(store)
                results["turbok-link"].append(timed(lambda: store.pull(parse(f"{link.host}/bench/py:v1"))))
            link.close()
            # a second pull of the cached image: no network
            clean_store(store)
            images = ImageStore(work / "table", store=store)
            images.pull(f"{reg.host}/bench/py:v1")
            before = reg.requests()
            second = timed(lambda: images.pull(f"{reg.host}/bench/py:v1"))
            requests = reg.requests() - before
            # a second image sharing the two big layers
            gets = reg.blob_gets()
            shared = timed(lambda: images.pull(f"{reg.host}/bench/other:v1"))
            shared_gets = reg.blob_gets() - gets
            clean_store(store)
        med = {k: statistics.median(v) for k, v in results.items() if v}
        ratio = med["skopeo"] / med["turbok"]
        print(f"load average at end: {os.getloadavg()[0]:.1f}")
        print()
        print("| figure | median | throughput | rounds |")
        print("|---|---|---|---|")
        for key, label in (("skopeo", "reference: `skopeo copy` to an OCI layout (no unpack)"),
                           ("turbok", "turbok pull + unpack (per layer, 3 threads)"),
                           ("turbok-1-thread", "turbok pull + unpack, one layer at a time"),
                           ("umoci", "`skopeo copy` + `umoci raw unpack` (per image)"),
                           ("per-image", "turbok's unpacker per image, layers in order (no network)")):
            if key in med:
                print(f"| {label} | {med[key]:.3f} s | {size / med[key] / 1e6:.0f} MB/s | {len(results[key])} |")
        print(f"| turbok / skopeo throughput, loopback | {ratio:.2f} | target >= 0.8 | |")
        for key, label in (("skopeo-link", f"reference through a {args.link:.0f} MB/s link: `skopeo copy`"),
                           ("turbok-link", f"turbok pull + unpack through the {args.link:.0f} MB/s link")):
            print(f"| {label} | {med[key]:.3f} s | {size / med[key] / 1e6:.0f} MB/s | {len(results[key])} |")
        print(f"| turbok / skopeo throughput, {args.link:.0f} MB/s link | {med['skopeo-link'] / med['turbok-link']:.2f} "
              "| | |")
        print(f"| second pull of the cached image | {second * 1000:.1f} ms | {requests} registry requests | |")
        print(f"| pull of an image sharing 2 of 3 layers | {shared * 1000:.1f} ms | {shared_gets} blob GETs "
              "(its config and top layer) | |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
