"""``turbok image``: the local image table and the built-in base image.

``ls`` shows every entry of the table (turbok/runtime/images.yaml plus
``<images>/images.yaml``) and whether its root filesystem is on disk;
``resolve REF`` says what an image reference runs on; ``build-base`` builds
the base image with mmdebstrap (root, a Debian mirror, about 30 s).
Registered by turbok.cli.main as the ``image`` sub-app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from turbok.cli.output import console, fail, print_data

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Local images: the image table and the built-in base image.")

_IMAGES_OPT = typer.Option(None, "--images", help="Images directory (default: $TURBOK_IMAGES or <TURBOK_HOME>/images).")


@app.command("ls")
def ls(
    images: Path | None = _IMAGES_OPT,
    output: str | None = typer.Option(None, "--output", "-o", help="json or yaml instead of a table."),
) -> None:
    """List the image table: name, patterns, root filesystem and whether it is built."""
    from rich.table import Table

    from turbok.runtime.images import ImageStore

    store = ImageStore(images)
    rows: list[dict[str, Any]] = []
    for image in store.entries():
        rootfs = store.rootfs_of(image)
        rows.append(
            {
                "name": image.name,
                "match": list(image.match),
                "rootfs": str(rootfs),
                "built": (rootfs / "bin").exists(),
                "command": list(image.command),
            }
        )
    if output:
        print_data(rows, output)
        return
    table = Table("NAME", "MATCHES", "ROOTFS", "BUILT")
    for r in rows:
        table.add_row(r["name"], ", ".join(r["match"]), r["rootfs"], "yes" if r["built"] else "no")
    console.print(table)


@app.command("resolve")
def resolve(reference: str, images: Path | None = _IMAGES_OPT) -> None:
    """Show what an image reference runs on here (errors if unknown or not built)."""
    from turbok.runtime.images import ImageStore

    r = ImageStore(images).resolve(reference)
    print_data(
        {"reference": r.reference, "image": r.name, "rootfs": str(r.rootfs), "command": list(r.command),
         "env": r.env, "workingDir": r.working_dir},
        "yaml",
    )


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
