"""``turbok image``: pulled OCI images, the local image table and the built-in base image.

``pull REF`` fetches an image into the machine's store (``$TURBOK_IMAGE_STORE``,
shared by every home) with a progress bar, following the kubelet's default
``imagePullPolicy`` unless ``--policy`` says otherwise; logins come from an
``--authfile`` (a ``.dockerconfigjson``, 0600) or ``$REGISTRY_AUTH_FILE``.
``ls`` shows the pulled images and every entry of the table (turbok/runtime/images.yaml
plus ``<images>/images.yaml``) with whether its root filesystem is on disk;
``rm REF`` untags (the image goes with its last tag), ``prune`` removes what no
image needs (``--all``: every image no running container is on);
``resolve REF`` says what an image reference runs on; ``build-base`` builds
the base image with mmdebstrap (root, a Debian mirror, about 30 s).
Registered by turbok.cli.main as the ``image`` sub-app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from turbok.cli.output import cell, console, fail, print_data, say

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Images: pull, list, remove and prune OCI images; the built-in images.")

_IMAGES_OPT = typer.Option(None, "--images", help="Images directory (default: $TURBOK_IMAGES or <TURBOK_HOME>/images).")
_STORE_OPT = typer.Option(None, "--store", help="The machine's image store (default: $TURBOK_IMAGE_STORE or "
                          "/var/lib/turbok/images).")


def _store(images: Path | None, store: Path | None) -> Any:
    from turbok.runtime.images import ImageStore
    from turbok.runtime.imagestore import OciStore

    try:
        return ImageStore(images, store=OciStore(store) if store is not None else None)
    except ValueError as e:
        fail(str(e))


def _authfile(path: Path | None) -> list[bytes]:
    """The login document of ``--authfile`` / ``$REGISTRY_AUTH_FILE``: only from a file no one else can read."""
    import os
    import stat

    if path is None:
        env = os.environ.get("REGISTRY_AUTH_FILE")
        if not env:
            return []
        path = Path(env)
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as e:
        fail(f"cannot read the auth file {path}: {e.strerror}")
    if stat.S_IMODE(st.st_mode) & 0o077:
        fail(f"the auth file {path} holds secrets and is readable by others (mode "
             f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 it")
    from turbok.runtime.registry import parse_dockerconfig

    try:
        parse_dockerconfig(data, source=str(path))
    except ValueError as e:
        fail(str(e))
    return [data]


@app.command("pull")
def pull(
    reference: str,
    policy: str | None = typer.Option(None, "--policy", help="Always, IfNotPresent or Never (default: the kubelet's "
                                      "for the reference: Always for :latest or no tag, else IfNotPresent)."),
    authfile: Path | None = typer.Option(None, "--authfile", help="A .dockerconfigjson with registry logins (0600; "
                                         "default: $REGISTRY_AUTH_FILE)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    images: Path | None = _IMAGES_OPT,
    store: Path | None = _STORE_OPT,
) -> None:
    """Pull an image from its registry into the machine's store (layers already here are not fetched)."""
    import threading

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from turbok.runtime.errors import ImageError

    secrets = _authfile(authfile)
    s = _store(images, store)
    if quiet or not console.is_terminal:
        result = s.pull(reference, policy=policy, pull_secrets=secrets)
    else:
        lock = threading.Lock()
        tasks: dict[str, Any] = {}
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=console, transient=True) as progress:

            def on_progress(digest: str, done: int, total: int) -> None:
                with lock:
                    if digest not in tasks:
                        tasks[digest] = progress.add_task(digest.split(":", 1)[-1][:12], total=total)
                    progress.update(tasks[digest], completed=done)

            try:
                result = s.pull(reference, policy=policy, pull_secrets=secrets, progress=on_progress)
            except ImageError:
                progress.stop()
                raise
    image = result.image
    what = image.digest or image.name
    if result.pulled:
        say(f"pulled {reference} ({what}): {result.size / 1e6:.1f} MB in {result.seconds:.1f} s")
    else:
        say(f"{reference} is present ({what})")


@app.command("rm")
def rm(
    reference: str,
    force: bool = typer.Option(False, "--force", help="Even if a running container is on it (it keeps running; a "
                               "restart pulls it again)."),
    store: Path | None = _STORE_OPT,
) -> None:
    """Untag a pulled image; it goes with its last tag (and its layers no other image has)."""
    from turbok.runtime.reference import parse

    s = _store(None, store).store
    for ref in s.remove(parse(reference), force=force):
        say(f"untagged {ref}")


@app.command("prune")
def prune(
    all_unused: bool = typer.Option(False, "--all", help="Also every image no running container is on."),
    store: Path | None = _STORE_OPT,
) -> None:
    """Remove layers, blobs and partial downloads no image needs, and images no reference names."""
    s = _store(None, store).store
    result = s.prune(all_unused=all_unused)
    for image in result.images:
        say(f"deleted {image}")
    say(f"removed {len(result.images)} images, {result.layers} layers, {result.blobs} blobs: "
        f"{result.bytes / 1e6:.1f} MB freed")


@app.command("ls")
def ls(
    images: Path | None = _IMAGES_OPT,
    output: str | None = typer.Option(None, "--output", "-o", help="json or yaml instead of a table."),
    store_dir: Path | None = _STORE_OPT,
) -> None:
    """List pulled images (references, digest, size) and the image table (patterns, root filesystem, built)."""
    import datetime

    from rich.table import Table

    store = _store(images, store_dir)
    pulled: list[dict[str, Any]] = []
    if store_dir is not None or store.store.refs_file.exists():
        in_use = store.store.mounted_in_use()
        for image in store.store.images():
            pulled.append({
                "name": ", ".join(r for r in image.refs if "@" not in r) or "<none>",
                "kind": "pulled", "refs": list(image.refs), "digest": image.repo_digest.split("@", 1)[1],
                "id": image.config_digest, "platform": image.platform, "size": image.size,
                "unpackedSize": image.unpacked_bytes, "layers": len(image.layers), "inUse": image.id in in_use,
                "pulled": datetime.datetime.fromtimestamp(image.pulled_at, datetime.UTC).isoformat(timespec="seconds"),
            })
    rows: list[dict[str, Any]] = []
    for image in store.entries():
        rootfs = store.rootfs_of(image)
        rows.append(
            {
                "name": image.name,
                "kind": "built-in",
                "match": list(image.match),
                "rootfs": str(rootfs),
                "built": (rootfs / "bin").exists(),
                "command": list(image.command),
            }
        )
    if output:
        print_data(pulled + rows, output)
        return
    if pulled:
        table = Table("IMAGE", "DIGEST", "SIZE", "UNPACKED", "LAYERS", "IN USE", title="pulled")
        for r in pulled:
            table.add_row(cell(r["name"]), r["digest"][:19], f"{r['size'] / 1e6:.1f} MB",
                          f"{r['unpackedSize'] / 1e6:.1f} MB", str(r["layers"]), "yes" if r["inUse"] else "")
        console.print(table)
    table = Table("NAME", "MATCHES", "ROOTFS", "BUILT", title="built-in")
    for r in rows:
        table.add_row(r["name"], ", ".join(r["match"]), r["rootfs"], "yes" if r["built"] else "no")
    console.print(table)


@app.command("resolve")
def resolve(reference: str, images: Path | None = _IMAGES_OPT, store: Path | None = _STORE_OPT) -> None:
    """Show what an image reference runs on here (errors if not pulled, unknown or not built); no network."""

    r = _store(images, store).resolve(reference)
    data: dict[str, Any] = {"reference": r.reference, "image": r.name, "rootfs": str(r.rootfs),
                            "command": list(r.command), "env": r.env, "workingDir": r.working_dir}
    if r.digest:
        data.update({"digest": r.digest, "entrypoint": list(r.entrypoint), "cmd": list(r.cmd), "user": r.user})
    print_data(data, "yaml")


@app.command("build-base")
def build_base(
    images: Path | None = _IMAGES_OPT,
    force: bool = typer.Option(False, "--force", help="Rebuild even if built (stop every sandbox first)."),
    mirror: str | None = typer.Option(None, "--mirror", help="Debian mirror URL (default: mmdebstrap's)."),
) -> None:
    """Build the built-in base image (Debian bookworm minbase + python3) with mmdebstrap."""
    import time

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from turbok.runtime.base_image import base_image_info, build_base_image
    from turbok.runtime.images import ImageStore

    store = ImageStore(images)
    if base_image_info(store) is not None and not force:
        console.print(f"base image already built in {store.builtin_dir('python-runtime-sandbox')} (--force rebuilds)")
        return
    started = time.monotonic()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("building the base image", total=None)

        def on_line(line: str) -> None:
            if line.startswith(("I:", "E:", "W:")):
                progress.update(task, description=f"building the base image: {line[2:].strip()[:70]}")

        rootfs = build_base_image(store, force=force, mirror=mirror, on_line=on_line)
    info = base_image_info(store)
    if info is None:
        fail(f"build finished but {rootfs} is not a usable image")
    size = int(str(info.get("bytes", 0))) / 1e6
    console.print(f"built {rootfs} ({size:.0f} MB) in {time.monotonic() - started:.0f} s")
