"""kubectl driven against ``turbok serve``: the binary, its version, a runner bound to a control plane.

Shared by the compatibility tests (tests/compat/test_kubectl*.py); the fixtures
``kubectl`` and ``ns`` that use it are in tests/compat/conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ControlPlaneProcess

KUBECTL = shutil.which("kubectl")


def client_minor(binary: str | None) -> int:
    """The minor version of a kubectl binary (0 when there is none)."""
    if binary is None:
        return 0
    out = subprocess.run([binary, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
    return int(re.sub(r"\D", "", json.loads(out.stdout)["clientVersion"]["minor"]))


# From kubectl 1.27 on, schema errors come from the server (field validation) and `explain` reads
# OpenAPI v3 unless told otherwise; older clients (Debian 12 ships 1.20) validate on their side.
MODERN = client_minor(KUBECTL) >= 27
EXT = "extensions.agents.x-k8s.io/v1beta1"

#: Every module of kubectl tests carries these marks.
MARKS = [pytest.mark.compat,
         pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (it is what these tests drive)")]

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def pool_yaml(name: str, replicas: int = 0, namespace: str | None = None, labels: dict[str, str] | None = None,
              template: str = "t") -> str:
    md: dict[str, Any] = {"name": name}
    if namespace:
        md["namespace"] = namespace
    if labels:
        md["labels"] = labels
    return yaml.safe_dump({"apiVersion": EXT, "kind": "SandboxWarmPool", "metadata": md,
                           "spec": {"replicas": replicas, "sandboxTemplateRef": {"name": template}}})


def make_kubectl(control_plane: ControlPlaneProcess, cache: Path, binary: str) -> Kubectl:
    def run(*args: str, stdin: str | None = None, ok: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
        done = subprocess.run([binary, f"--cache-dir={cache}", *args], env=env, input=stdin, text=True,
                              capture_output=True, timeout=timeout)
        if ok and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    return run


def items(kubectl: Kubectl, *args: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(kubectl("get", *args, "-o", "json").stdout)["items"]
    return out
