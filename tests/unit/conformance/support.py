"""Helpers of the conformance tests: where the test data lives, cluster doubles on loopback, fast options.

The doubles are the Kubernetes API double (tests/doubles/kube_api.py) replaying
tests/data/conformance/doubles/*-cluster-double, with the AI cluster controllers
simulated by tests/doubles/ai_cluster.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.doubles import KubeApiDouble
from tests.doubles.ai_cluster import AiClusterDouble
from turbok.client.kubeconfig import load_kubeconfig
from turbok.conformance.checks import CheckOptions
from turbok.conformance.kube import KubeClient
from turbok.conformance.results import RunReport
from turbok.conformance.runner import Runner, RunSettings

__all__ = ["DATA", "DOUBLES", "Cluster", "fast_options", "serve_double"]

DATA = Path(__file__).resolve().parents[2] / "data" / "conformance"
DOUBLES = DATA / "doubles"


def fast_options(**overrides: Any) -> CheckOptions:
    """Options that keep double-driven runs to seconds: short waits, quick polls."""
    opts = CheckOptions(timeout=3.0, poll_interval=0.01, negative_wait=0.3, autoscaling_timeout=3.0)
    for key, value in overrides.items():
        setattr(opts, key, value)
    return opts


@dataclass
class Cluster:
    """A cluster double being served: its API double, its simulated controllers, a kubeconfig for it."""

    api: KubeApiDouble
    sim: AiClusterDouble
    kubeconfig: Path

    def client(self) -> KubeClient:
        return KubeClient(load_kubeconfig(self.kubeconfig))

    def run(self, **settings: Any) -> RunReport:
        options = settings.pop("options", None) or fast_options()
        with self.client() as client:
            return Runner(client, RunSettings(options=options, **settings)).run()


def serve_double(name: str, conformant: bool, tmp_path: Path) -> Iterator[Cluster]:
    api = KubeApiDouble(DOUBLES / name)
    sim = AiClusterDouble(api.store, conformant=conformant)
    with api.running():
        yield Cluster(api, sim, api.write_kubeconfig(tmp_path / f"{name}.kubeconfig"))
