"""Fixtures for runtime tests with real runsc and bwrap: the base image.

The base image is built once per machine (about 40 s, needs a Debian mirror)
into ``$TURBOK_IMAGES`` or ``~/.turbok/images`` (the real home, whatever
TURBOK_HOME a test sets), where ``turbok image build-base`` in setup puts it.
Each pod test removes its own pods (``podcheck.leftovers`` checks nothing is left).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from turbok.runtime.base_image import build_base_image
from turbok.runtime.images import ImageStore

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
