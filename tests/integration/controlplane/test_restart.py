"""A restart of the control plane loses no object and re-adopts running sandboxes."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from tests.conftest import ControlPlaneProcess

from .conftest import Kube, claim, pool, sandbox, template


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["clean-stop", "crash"])
def test_restart_keeps_objects_and_running_sandboxes(make_control_plane: Callable[..., ControlPlaneProcess],
                                                     how: signal.Signals) -> None:
    cp = make_control_plane()
    kube = Kube(cp, "default")
    kube.create(template("py"))
    kube.create(pool("py-pool", "py", 1))
    kube.create(claim("mine", "py-pool"))
    kube.create(sandbox("solo"))
    name = kube.wait_condition(kube.claim, "mine", timeout=30)["status"]["sandbox"]["name"]
    kube.wait_condition(kube.sandbox, "solo", timeout=30)
    with kube.connect(name) as conn:
        # A process started now must still run after the restart: the sandbox was re-adopted, not recreated.
        assert conn.commands.run("nohup sleep 1000 >/dev/null 2>&1 & echo $! > /app/pid").exit_code == 0
        pid = conn.files.read("pid").decode().strip()
    before = {k: kube.api.list(r, "default")["items"] for k, r in
              (("claim", kube.claim), ("pool", kube.pool), ("template", kube.template), ("sandbox", kube.sandbox))}
    kube.close()

    cp.stop(how)
    cp.start()
    kube = Kube(cp, "default")
    after = {k: kube.api.list(r, "default")["items"] for k, r in
             (("claim", kube.claim), ("pool", kube.pool), ("template", kube.template), ("sandbox", kube.sandbox))}
    for kind, items in before.items():
        assert {(o["metadata"]["name"], o["metadata"]["uid"]) for o in items} == \
            {(o["metadata"]["name"], o["metadata"]["uid"]) for o in after[kind]}, kind
    kube.wait_condition(kube.claim, "mine", timeout=30)
    with kube.connect(name) as conn:
        assert conn.commands.run(f"kill -0 {pid} && echo alive").stdout.strip() == "alive"
    with kube.connect("solo") as conn:
        assert conn.commands.run("true").exit_code == 0
    kube.close()
