"""Image references as Docker normalises them, and the kubelet's default pull policy."""

from __future__ import annotations

import pytest

from turbok.runtime.errors import InvalidImageName
from turbok.runtime.reference import default_pull_policy, is_loopback, parse

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "canonical", "api"), [
    ("python", "docker.io/library/python:latest", "registry-1.docker.io"),
    ("python:3.12-slim", "docker.io/library/python:3.12-slim", "registry-1.docker.io"),
    ("jupyter/base-notebook", "docker.io/jupyter/base-notebook:latest", "registry-1.docker.io"),
    ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1", "registry-1.docker.io"),
    ("localhost/app", "localhost/app:latest", "localhost"),
    ("127.0.0.1:5000/t/x:v1", "127.0.0.1:5000/t/x:v1", "127.0.0.1:5000"),
    (f"ghcr.io/o/r@{D}", f"ghcr.io/o/r@{D}", "ghcr.io"),
    (f"ghcr.io/o/r:v1@{D}", f"ghcr.io/o/r:v1@{D}", "ghcr.io"),
])
def test_normalisation(text: str, canonical: str, api: str) -> None:
    ref = parse(text)
    assert str(ref) == canonical and ref.api_host == api


@pytest.mark.parametrize("text", ["", " python", "Python", "foo/Bar", "a:b:c", "x@sha256:00", "x@md5:" + "0" * 32,
                                  "x:" + "t" * 129, "-x", "x/"])
def test_invalid_names(text: str) -> None:
    with pytest.raises(InvalidImageName, match="couldn't parse image name"):
        parse(text)


@pytest.mark.parametrize(("text", "policy"), [("python", "Always"), ("python:latest", "Always"),
                                              ("python:3", "IfNotPresent"), (f"python@{D}", "IfNotPresent"),
                                              ("localhost:5000/x", "Always")])
def test_default_pull_policy(text: str, policy: str) -> None:
    assert default_pull_policy(text) == policy


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1:5000") and is_loopback("localhost") and is_loopback("[::1]:5000")
    assert not is_loopback("10.0.0.1:5000") and not is_loopback("ghcr.io")
