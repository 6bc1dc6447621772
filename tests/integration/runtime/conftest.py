"""Fixtures for runtime tests with real runsc and bwrap: the base image, a sandbox root, runtimes.

The base image is built once per machine (about 40 s, needs a Debian mirror)
into ``$TURBOK_IMAGES`` or ``~/.turbok/images`` (the real home, whatever
TURBOK_HOME a test sets), where ``turbok image build-base`` in setup puts it.
Every sandbox a test leaves behind is removed at the end of its module.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import pytest_asyncio

from turbok.runtime.base import SandboxSpec, sandbox_id
from turbok.runtime.base_image import build_base_image
from turbok.runtime.bubblewrap import BubblewrapRuntime
from turbok.runtime.gvisor import RunscRuntime
from turbok.runtime.images import ImageStore
from turbok.runtime.local import release_root

pytestmark = pytest.mark.integration

IMAGE = "us-central1-docker.pkg.dev/k8s-staging-images/agent-sandbox/python-runtime-sandbox:latest-main"


def images_dir() -> Path:
    env = os.environ.get("TURBOK_IMAGES")
    return Path(env) if env else Path(os.path.expanduser("~")) / ".turbok" / "images"


@pytest.fixture(scope="session")
def images() -> ImageStore:
    store = ImageStore(images_dir())
    build_base_image(store)  # no-op when built
    return store


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("sandboxes")
    yield path
    # Whatever a test left running: stop them all at once (teardown is slow under gVisor).
    async def clean() -> None:
        rt = BubblewrapRuntime(path) if (path / ".bubblewrap").exists() else RunscRuntime(path)
        await asyncio.gather(*(rt.remove(i) for i in await rt.list()), return_exceptions=True)

    asyncio.run(clean())
    release_root(path)  # the runtime bound it nosuid,nodev onto itself


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(root: Path, images: ImageStore) -> AsyncIterator[RunscRuntime]:
    yield RunscRuntime(root, images)


class SpecFactory(Protocol):
    def __call__(self, name: str, **kw: Any) -> SandboxSpec: ...


def _make_spec(name: str, **kw: Any) -> SandboxSpec:
    """A spec for the examples' image; ids differ per test process so runs never collide."""
    fields: dict[str, Any] = {"id": sandbox_id(f"{name}-{os.getpid()}"), "hostname": name, "image": IMAGE}
    fields.update(kw)
    return SandboxSpec(**fields)


@pytest.fixture(scope="session")
def make_spec() -> SpecFactory:
    return _make_spec
