"""The local image table: the upstream examples' images, unknown ones, local additions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from turbok.runtime.errors import ImageError, ImageNotBuilt, ImageNotFound, InvalidImageName
from turbok.runtime.images import BASE_IMAGE, ImageStore

EXAMPLES = Path(__file__).parents[2] / "data" / "runtime" / "examples"


def built_store(tmp_path: Path) -> ImageStore:
    (tmp_path / BASE_IMAGE / "rootfs" / "bin").mkdir(parents=True)
    return ImageStore(tmp_path)


def images_in(path: Path) -> list[str]:
    found = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "image" and isinstance(v, str):
                    found.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for doc in yaml.safe_load_all(path.read_text()):
        walk(doc)
    return found


@pytest.mark.parametrize(
    "reference",
    [
        "us-central1-docker.pkg.dev/k8s-staging-images/agent-sandbox/python-runtime-sandbox:latest-main",
        "python-runtime-sandbox",
        "python-runtime-sandbox:v0.1",
        "example.com/x/python-runtime-sandbox@sha256:" + "0" * 64,
        "python:3.11-slim",
        "docker.io/library/python:3.12",
        "busybox:1.36",
    ],
)
def test_example_images_resolve_to_the_base_rootfs(tmp_path: Path, reference: str) -> None:
    r = built_store(tmp_path).resolve(reference)
    assert r.rootfs == tmp_path / BASE_IMAGE / "rootfs"
    assert r.reference == reference


def test_python_runtime_sandbox_idles_in_app() -> None:
    image = ImageStore(Path("/nonexistent")).lookup("python-runtime-sandbox")
    assert image.env["SANDBOX_BASE_DIR"] == "/app"
    assert image.working_dir == "/app"
    assert image.command[0] == "/bin/sh" and "wait" in image.command[-1]


def test_python_image_runs_python_by_default(tmp_path: Path) -> None:
    assert built_store(tmp_path).resolve("python:3.11-slim").command == ("python3",)


def test_every_example_image_is_known_or_refused_by_name(tmp_path: Path) -> None:
    store = built_store(tmp_path)
    seen = {}
    for f in sorted(EXAMPLES.glob("*.yaml")):
        for ref in images_in(f):
            try:
                seen[ref] = store.resolve(ref).name
            except (ImageNotFound, InvalidImageName) as e:  # not pulled, or a template placeholder (${IMAGE})
                assert e.reference == ref and ref in str(e)
                seen[ref] = None
    python_template = images_in(EXAMPLES / "python-sandbox-template.yaml")
    assert python_template and all(seen[r] == BASE_IMAGE for r in python_template)
    assert seen["python:3.11-slim"] == "python"
    assert seen["busybox:1.36"] == "busybox"
    # Images whose software the base image lacks are refused, not faked.
    assert seen["alpine/git"] is None and seen["aider-sandbox:v1"] is None


def test_known_but_not_built_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(ImageNotBuilt, match="turbok image build-base") as info:
        ImageStore(tmp_path).resolve("python-runtime-sandbox:latest")
    assert info.value.reference == "python-runtime-sandbox:latest"


def test_unknown_image_names_reference_and_known_entries(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFound) as info:
        built_store(tmp_path).resolve("ghcr.io/acme/secret-agent:1")
    assert info.value.reference == "ghcr.io/acme/secret-agent:1"
    assert "python-runtime-sandbox" in str(info.value)


def test_local_table_comes_first_and_takes_paths(tmp_path: Path) -> None:
    store_dir = tmp_path / "images"
    mine = tmp_path / "my-rootfs"
    (mine / "bin").mkdir(parents=True)
    store_dir.mkdir()
    (store_dir / "images.yaml").write_text(
        yaml.safe_dump(
            {"images": [
                {"name": "mine", "rootfs": str(mine), "command": ["/bin/true"], "match": ["acme/*"]},
                {"name": "override", "rootfs": "rel", "match": ["python:3.9*"]},
            ]}
        )
    )
    (store_dir / "rel" / "bin").mkdir(parents=True)
    store = ImageStore(store_dir)
    r = store.resolve("acme/tool:2")
    assert (r.name, r.rootfs, r.command) == ("mine", mine, ("/bin/true",))
    assert store.resolve("python:3.9").rootfs == store_dir / "rel"
    with pytest.raises(ImageNotBuilt):
        store.resolve("python:3.11")  # packaged entry still there, base not built


def test_broken_local_table_is_an_image_error(tmp_path: Path) -> None:
    (tmp_path / "images.yaml").write_text("images: {not: a list}\n")
    with pytest.raises(ImageError, match="list 'images'"):
        ImageStore(tmp_path).resolve("python")


def test_images_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURBOK_IMAGES", str(tmp_path))
    assert ImageStore().root == tmp_path
    monkeypatch.delenv("TURBOK_IMAGES")
    monkeypatch.setenv("TURBOK_HOME", str(tmp_path / "home"))
    assert ImageStore().root == tmp_path / "home" / "images"
