"""Ctrl-C and SIGTERM on a real ``turbok conformance run`` process: it cleans up, writes partial reports, exits 130."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.doubles import KubeApiDouble
from tests.doubles.ai_cluster import AiClusterDouble

pytestmark = pytest.mark.integration

DOUBLE = Path(__file__).resolve().parents[2] / "data" / "conformance" / "doubles" / "conformant-cluster-double"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_check_cleans_up(tmp_path: Path, sig: signal.Signals) -> None:
    api = KubeApiDouble(DOUBLE)
    AiClusterDouble(api.store)
    with api.running():
        kc = api.write_kubeconfig(tmp_path / "kubeconfig")
        out = tmp_path / "reports"
        proc = subprocess.Popen(
            [sys.executable, "-m", "turbok", "conformance", "run", "--kubeconfig", str(kc), "--focus", "ai_inference|gang",
             "--negative-wait", "120", "--poll-interval", "0.05", "--output-dir", str(out), "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # as a terminal starts it: a suite run in the background (`cmd &`) ignores SIGINT, and a child
            # inherits that, so that Python would never raise KeyboardInterrupt in it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while not any(j["metadata"]["name"].endswith("-nofit") for j in api.store.created_of("Job")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        assert api.store.labelled("app.kubernetes.io/managed-by=turbok-conformance")  # mid-run: objects exist
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert api.store.labelled("app.kubernetes.io/managed-by=turbok-conformance") == []
        deleted = {o["kind"] for o in api.store.deleted}
        assert {"Namespace", "Job", "ClusterQueue", "ResourceFlavor", "LocalQueue"} <= deleted
    report = json.loads(stdout)
    assert report["interrupted"] is True and report["summary"]["exitCode"] == 130
    by_id = {r["id"]: r for r in report["results"] if r["selected"]}
    assert by_id["ai_inference"]["status"] == "Passed"
    assert by_id["gang_scheduling"]["status"] == "Unknown" and by_id["gang_scheduling"]["reason"] == "interrupted (Ctrl-C)"
    assert json.loads((out / "results.json").read_text())["interrupted"] is True
    assert "INTERRUPTED" in (out / "e2e.log").read_text()
