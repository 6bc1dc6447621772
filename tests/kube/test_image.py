"""turbok's OCI image, built without a container engine, pushed to a loopback registry and run.

scripts/build_image.py builds it from the built-in base image and this environment; ``--push`` copies it
to a docker-registry on 127.0.0.1 (tests/oci_registry.py). The registry's manifest and config are checked
(entrypoint, command, non-root user, environment, one diff_id per layer), the image is pulled back and
unpacked with umoci as a runtime would, and the commands the chart's Deployments run (``operator ...``,
``router ...``, ``checkpoint operator ...``, and the checkpoint agents' ``turbok checkpoint agent ...``, each
with ``--help``) start from it as user 65532. deploy/image/Containerfile must describe
the same image.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.kube_cluster import REPO
from tests.oci_registry import missing as registry_missing
from tests.oci_registry import registry
from turbok import __version__
from turbok.checkpoint.operator import desired_objects
from turbok.kube.manifests import Install
from turbok.runtime.images import BASE_IMAGE, default_images_dir

BASE = default_images_dir() / BASE_IMAGE / "rootfs"


def _missing() -> str | None:
    for tool, package in (("skopeo", "skopeo"), ("umoci", "umoci")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if not (BASE / "usr" / "bin" / "python3").exists():
        return f"no built-in base image at {BASE} (turbok image build-base)"
    if os.geteuid() != 0:
        return "running the unpacked image needs chroot, which needs root"
    return registry_missing()


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _containerfile() -> dict[str, Any]:
    text = (REPO / "deploy" / "image" / "Containerfile").read_text()
    out: dict[str, Any] = {}
    for key in ("ENTRYPOINT", "CMD"):
        found = re.search(rf"^{key} (\[.*\])$", text, re.M)
        out[key] = json.loads(found.group(1)) if found else None
    user = re.search(r"^USER (\S+)$", text, re.M)
    env = re.search(r"^ENV (.*)$", text, re.M)
    out["USER"] = user.group(1) if user else None
    out["ENV"] = sorted(env.group(1).split()) if env else []
    return out


def test_the_image_is_built_pushed_and_runs_the_operator_and_the_router(tmp_path: Path) -> None:
    with registry(tmp_path / "registry") as reg:
        ref = f"{reg.host}/turbok:{__version__}"
        built = subprocess.run([sys.executable, str(REPO / "scripts" / "build_image.py"), "--output",
                                str(tmp_path / "oci"), "--level", "1", "--push", ref, "--insecure"],
                               capture_output=True, text=True, timeout=300, check=False)
        assert built.returncode == 0, built.stderr
        digest = built.stdout.strip().splitlines()[-1]
        with httpx.Client(base_url=reg.url, timeout=30) as http:
            r = http.get(f"/v2/turbok/manifests/{__version__}", headers={"Accept": MANIFEST})
            assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == digest
            manifest = r.json()
            config = http.get(f"/v2/turbok/blobs/{manifest['config']['digest']}").json()
            for layer in manifest["layers"]:
                assert http.head(f"/v2/turbok/blobs/{layer['digest']}").status_code == 200
        image = config["config"]
        assert image["Entrypoint"] == ["python3", "-m", "turbok"] and image["Cmd"] == ["operator"]
        assert image["User"] == "65532:65532", "non-root, as the chart's securityContext runs it"
        assert "PYTHONDONTWRITEBYTECODE=1" in image["Env"], "the chart's root filesystem is read-only"
        assert image["Labels"]["org.opencontainers.image.version"] == __version__
        assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"]) == 2
        assert (config["architecture"], config["os"]) == ("amd64", "linux")
        # the Containerfile any engine builds says the same
        spec = _containerfile()
        assert (spec["ENTRYPOINT"], spec["CMD"], spec["USER"]) == (image["Entrypoint"], image["Cmd"], image["User"])
        assert set(spec["ENV"]) <= set(image["Env"])

        # pulled back and unpacked as a runtime would, then run as its user with the chart's arguments
        pulled = tmp_path / "pulled"
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
                        f"oci:{pulled}:{__version__}"], check=True, capture_output=True, timeout=120)
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{pulled}:{__version__}", str(bundle)], check=True,
                   capture_output=True, timeout=120)
    process = json.loads((bundle / "config.json").read_text())["process"]
    assert process["args"] == ["python3", "-m", "turbok", "operator"]
    user = process["user"]
    assert (user["uid"], user["gid"]) == (65532, 65532)
    install = Install()
    deployments = [install.operator()[0], install.router()[0],
                   next(o for o in install.checkpoint() if o["kind"] == "Deployment")]
    containers = [d["spec"]["template"]["spec"]["containers"][0] for d in deployments]
    # the checkpoint operator's agents run from this image too, by the command `turbok`
    agents = next(o for o in desired_objects({"metadata": {"name": "c"}}, namespace="ns", image="turbok")
                  if o["kind"] == "DaemonSet")
    containers.append(agents["spec"]["template"]["spec"]["containers"][0])
    for container in containers:
        argv = [*(container.get("command") or process["args"][:-1]), *container["args"], "--help"]
        ran = subprocess.run(["chroot", f"--userspec={user['uid']}:{user['gid']}", str(bundle / "rootfs"),
                              "/usr/bin/env", "-i", *process["env"], *argv], capture_output=True, text=True,
                             timeout=60, cwd="/", check=False)
        assert ran.returncode == 0, f"{argv}: {ran.stderr[-2000:]}"
        words = list(itertools.takewhile(lambda a: not a.startswith("-"), container["args"]))
        assert f"Usage: python -m turbok {' '.join(words)} " in ran.stdout, ran.stdout
