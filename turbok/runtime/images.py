"""The local image table: image references -> root filesystems on this machine.

Until OCI images arrive, ``SandboxSpec.image`` is resolved here. The table is
``images.yaml`` beside this module (packaged; documented in docs/runtime.md),
extended by ``<images>/images.yaml`` for local additions (consulted first).
The images directory is a constructor argument, else ``$TURBOK_IMAGES``,
else ``<TURBOK_HOME>/images``.

``ImageStore.resolve(reference)`` is called on every sandbox start: a
pattern match and one ``stat``; unknown references raise ``ImageNotFound``
(with the reference) and known ones whose root filesystem is missing raise
``ImageNotBuilt`` (saying how to build it), so controllers can set
``Ready=False`` with that reason. The built-in base image itself is built by
``turbok.runtime.base_image``.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from turbok.home import home
from turbok.runtime.errors import ImageError, ImageNotBuilt, ImageNotFound

__all__ = ["BASE_IMAGE", "Image", "ImageStore", "ResolvedImage", "default_images_dir"]

#: Name of the built-in base image (a read-only Debian userland with Python 3).
BASE_IMAGE = "python-runtime-sandbox"
_BUILTIN = "builtin:"
_USER_TABLE = "images.yaml"


def default_images_dir() -> Path:
    """``$TURBOK_IMAGES``, else ``<TURBOK_HOME>/images``."""
    env = os.environ.get("TURBOK_IMAGES")
    return Path(env).absolute() if env else home().images


@dataclass(frozen=True)
class Image:
    """One entry of the table."""

    name: str
    rootfs: str
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = "/"
    match: tuple[str, ...] = ()
    description: str = ""

    @property
    def builtin(self) -> str | None:
        """The built-in root filesystem's name, or None for a plain directory."""
        return self.rootfs[len(_BUILTIN) :] if self.rootfs.startswith(_BUILTIN) else None

    def matches(self, reference: str) -> bool:
        return any(fnmatch.fnmatchcase(reference, pattern) for pattern in self.match)


@dataclass(frozen=True)
class ResolvedImage:
    """What a runtime needs of an image to start a sandbox on it."""

    reference: str
    name: str
    rootfs: Path
    command: tuple[str, ...]
    env: dict[str, str]
    working_dir: str


def _parse_table(data: Any, source: str) -> list[Image]:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ImageError(f"{source}: want a mapping with a list 'images'", reference=source)
    out = []
    for i, e in enumerate(data["images"]):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not isinstance(e.get("rootfs"), str):
            raise ImageError(f"{source}: images[{i}] needs string 'name' and 'rootfs'", reference=source)
        out.append(
            Image(
                name=e["name"],
                rootfs=e["rootfs"],
                command=tuple(str(a) for a in e.get("command") or ()),
                env={str(k): str(v) for k, v in (e.get("env") or {}).items()},
                working_dir=str(e.get("workingDir") or "/"),
                match=tuple(str(m) for m in e.get("match") or (e["name"],)),
                description=str(e.get("description") or "").strip(),
            )
        )
    return out


def _packaged_table() -> list[Image]:
    text = resources.files("turbok.runtime").joinpath("images.yaml").read_text()
    return _parse_table(yaml.safe_load(text), "turbok/runtime/images.yaml")


class ImageStore:
    """The image table over one images directory."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_images_dir()).absolute()
        self._entries: list[Image] | None = None

    def entries(self) -> list[Image]:
        """The table: local additions first, then the packaged entries."""
        if self._entries is None:
            local: list[Image] = []
            user_table = self.root / _USER_TABLE
            if user_table.is_file():
                local = _parse_table(yaml.safe_load(user_table.read_text()), str(user_table))
            self._entries = local + _packaged_table()
        return self._entries

    def builtin_dir(self, name: str) -> Path:
        """Directory of a built-in image: ``rootfs/`` and ``image.json`` inside."""
        return self.root / name

    def rootfs_of(self, image: Image) -> Path:
        if (name := image.builtin) is not None:
            return self.builtin_dir(name) / "rootfs"
        return Path(image.rootfs) if os.path.isabs(image.rootfs) else self.root / image.rootfs

    def lookup(self, reference: str) -> Image:
        """The first entry matching ``reference``; ``ImageNotFound`` if none does."""
        ref = reference.strip().split("@", 1)[0]
        for image in self.entries():
            if image.matches(ref):
                return image
        known = ", ".join(image.name for image in self.entries())
        raise ImageNotFound(
            f"image {reference!r} is not in the local image table (known: {known}); "
            "see docs/runtime.md to add one",
            reference=reference,
        )

    def resolve(self, reference: str) -> ResolvedImage:
        image = self.lookup(reference)
        rootfs = self.rootfs_of(image)
        if not (rootfs / "bin").exists():
            how = "run `turbok image build-base`" if image.builtin else f"create {rootfs}"
            raise ImageNotBuilt(
                f"image {reference!r} resolves to {image.name}, whose root filesystem {rootfs} "
                f"is not there: {how}",
                reference=reference,
            )
        return ResolvedImage(
            reference=reference,
            name=image.name,
            rootfs=rootfs,
            command=image.command,
            env=dict(image.env),
            working_dir=image.working_dir,
        )
