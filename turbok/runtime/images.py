"""Images: built-in root filesystems (the local image table) and pulled OCI images.

What callers use: ``ImageStore.resolve(reference) -> ResolvedImage`` on every
container start (local only, no network: ``rootfs`` to put a writable layer on,
``entrypoint``/``cmd``/``command``, ``env``, ``working_dir``, ``user`` with
``uid``/``gid``, ``image_id``/``digest`` for the Pod's ``imageID``, ``config``);
``ImageStore.pull(reference, policy=..., pull_secrets=..., progress=...) ->
PullResult`` before it, off the event loop (``asyncio.to_thread``): the kubelet's
``imagePullPolicy`` (``Always``, ``IfNotPresent``, ``Never``; the default from
the reference when None), ``pull_secrets`` the ``.dockerconfigjson`` documents
of the Pod's ``imagePullSecrets``; it raises ``InvalidImageName``,
``ImageNotPresent`` (``Never`` and not here: ``ErrImageNeverPull``) or
``ImagePullFailed`` (the registry's message: ``ErrImagePull``).

The table is ``images.yaml`` beside this module (packaged; documented in
docs/runtime.md), extended by ``<images>/images.yaml`` for local additions
(consulted first). The images directory is a constructor argument, else
``$TURBOK_IMAGES``, else ``<TURBOK_HOME>/images``. A reference the table
matches runs on its built-in root filesystem and is never pulled, unless an
image of exactly that reference was pulled (``turbok image pull``): pulled
images come first. Pulled images live in the machine's ``OciStore``
(``turbok.runtime.imagestore``, ``$TURBOK_IMAGE_STORE``), shared by every home.

``resolve`` is a pattern match, a small JSON read and one ``stat``; unknown
references raise ``ImageNotPresent`` (an ``ImageNotFound``) and known built-ins
whose root filesystem is missing raise ``ImageNotBuilt`` (saying how to build
it). The built-in base image itself is built by ``turbok.runtime.base_image``.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from turbok.home import home
from turbok.runtime.errors import ImageError, ImageNotBuilt, ImageNotFound, ImageNotPresent, InvalidImageName
from turbok.runtime.imageconfig import ImageConfig
from turbok.runtime.reference import PULL_POLICIES, default_pull_policy, parse

if TYPE_CHECKING:
    from turbok.runtime.imagestore import OciStore, Progress, StoredImage

__all__ = ["BASE_IMAGE", "Image", "ImageConfig", "ImageStore", "PullResult", "ResolvedImage", "default_images_dir"]

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
    """What a runtime needs of an image to start a container on it.

    ``command`` is what runs when the container gives neither ``command`` nor ``args``
    (``entrypoint + cmd``); Kubernetes' rule: ``command`` replaces ``entrypoint`` and drops
    ``cmd``, ``args`` alone replaces ``cmd`` (runs ``entrypoint + args``). ``uid``/``gid``: the
    image's ``User`` in numbers (None: not set, root), ``user_error`` when the image's passwd or
    group file lacks the name it gives."""

    reference: str
    name: str
    rootfs: Path
    command: tuple[str, ...]
    env: dict[str, str]
    working_dir: str
    entrypoint: tuple[str, ...] = ()
    user: str = ""
    uid: int | None = None
    gid: int | None = None
    user_error: str = ""
    #: ``name@sha256:...`` (the Pod's ``imageID``), "" for a built-in
    digest: str = ""
    #: the image config's digest (``sha256:...``), "" for a built-in
    image_id: str = ""
    config: ImageConfig = field(default_factory=ImageConfig)

    @property
    def cmd(self) -> tuple[str, ...]:
        return self.command[len(self.entrypoint):]

    @property
    def policy_uid(self) -> int | None:
        """The user ``runAsNonRoot`` is checked against (kubelet): 0 without ``User``, None for a name."""
        return self.config.policy_uid


@dataclass(frozen=True)
class PullResult:
    image: ResolvedImage
    #: False when every layer was already here (nothing but a manifest, at most, was fetched)
    pulled: bool
    #: compressed bytes of its layers; seconds the pull took
    size: int = 0
    seconds: float = 0.0


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
    """The image table over one images directory, and the machine's store of pulled images."""

    def __init__(self, root: Path | None = None, *, store: OciStore | None = None) -> None:
        self.root = (root or default_images_dir()).absolute()
        self._entries: list[Image] | None = None
        self._store = store

    @property
    def store(self) -> OciStore:
        """The machine's store of pulled OCI images (``$TURBOK_IMAGE_STORE``)."""
        if self._store is None:
            from turbok.runtime.imagestore import OciStore

            self._store = OciStore()
        return self._store

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

    def _pulled(self, reference: str) -> StoredImage | None:
        try:
            ref = parse(reference.strip())
        except InvalidImageName:
            return None
        if self._store is None and not _store_exists():
            return None
        return self.store.find(ref)

    def _resolved(self, reference: str, image: StoredImage) -> ResolvedImage:
        rootfs = self.store.rootfs(image)
        cfg = image.config
        uid, gid, error = cfg.resolve_user(rootfs)
        return ResolvedImage(
            reference=reference, name=image.repo_digest.split("@", 1)[0], rootfs=rootfs,
            command=cfg.entrypoint + cfg.cmd, env=dict(cfg.env), working_dir=cfg.working_dir,
            entrypoint=cfg.entrypoint, user=cfg.user, uid=uid, gid=gid, user_error=error,
            digest=image.repo_digest, image_id=image.config_digest, config=cfg,
        )

    def resolve(self, reference: str) -> ResolvedImage:
        """The image ``reference`` runs on here: a pulled image, else a table entry; no network."""
        pulled = self._pulled(reference)
        if pulled is not None:
            return self._resolved(reference, pulled)
        try:
            image = self.lookup(reference)
        except ImageNotFound:
            parse(reference.strip())  # InvalidImageName first, as the kubelet checks it
            known = ", ".join(image.name for image in self.entries())
            raise ImageNotPresent(f'image "{reference}" is not present on this machine: pull it (turbok image pull, '
                                  "or a Pod's imagePullPolicy other than Never); built-in images: " + known,
                                  reference=reference) from None
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

    def pull(self, reference: str, *, policy: str | None = None, pull_secrets: Sequence[bytes | str] = (),
             progress: Progress | None = None) -> PullResult:
        """Make ``reference`` present as the kubelet's ``imagePullPolicy`` says (blocking: run it in a thread).

        ``Never``: present or ``ImageNotPresent``; ``IfNotPresent``: pulled only when absent; ``Always``: the
        registry is asked what the reference is now (layers already here are not fetched again). A reference
        the image table matches is never pulled. Credentials: the logins of ``pull_secrets`` for the
        reference's registry, tried in turn, else anonymous."""
        started = time.monotonic()
        text = reference.strip()
        ref = parse(text)
        policy = policy or default_pull_policy(text)
        if policy not in PULL_POLICIES:
            raise ImageError(f"imagePullPolicy {policy!r} is not one of {', '.join(PULL_POLICIES)}",
                             reference=reference)
        present = self._pulled(text)
        if present is None and self._matches_table(text):
            return PullResult(self.resolve(text), pulled=False)  # a built-in: never pulled
        if present is not None and policy != "Always":
            return PullResult(self._resolved(text, present), pulled=False, size=present.size)
        if policy == "Never":
            raise ImageNotPresent(f'Container image "{reference}" is not present with pull policy of Never',
                                  reference=reference)
        from turbok.runtime.registry import credentials_for

        creds: list[Any] = list(credentials_for(ref, list(pull_secrets))) if pull_secrets else []
        stored = self.store.pull(ref, creds or [None], progress=progress)
        return PullResult(self._resolved(text, stored), pulled=stored.fetched > 0, size=stored.size,
                          seconds=time.monotonic() - started)

    def _matches_table(self, reference: str) -> bool:
        try:
            self.lookup(reference)
        except ImageNotFound:
            return False
        return True


def _store_exists() -> bool:
    from turbok.runtime.imagestore import default_store_dir

    return (default_store_dir() / "refs.json").exists()
