"""Real kubectl on real Pods: ``turbok serve``'s node runs them under gVisor; logs and exec as users type them.

The wire protocols are covered against a stand-in node in test_kubectl_streams.py; here
the whole path runs: kubectl, TLS, the API server, the node, the CRI log files the
runtime writes, ``runsc exec``. Port-forward into a Pod's network is covered with a pod
network of its own in tests/integration/node/test_streams_gvisor.py, and to the
router's Service in test_agent_sandbox_tunnel.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import termios
import time
from typing import Any

import pytest
import yaml

from tests.compat.kubectl import KUBECTL, MARKS, Kubectl
from tests.conftest import ControlPlaneProcess

pytestmark = [*MARKS, pytest.mark.skipif(shutil.which("runsc") is None,
                                         reason="runsc (gVisor) is not installed: no Pod runs")]

IMAGE = "python-runtime-sandbox"


def apply_pod(kubectl: Kubectl, ns: str, name: str, containers: list[dict[str, Any]], **spec: Any) -> None:
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": containers, **spec}}))


def wait_for(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_logs_with_kubectls_flags(kubectl: Kubectl, ns: str) -> None:
    apply_pod(kubectl, ns, "talker", [
        {"name": "main", "image": IMAGE, "command": ["sh", "-c", "for i in 1 2 3 4; do echo line $i; done; "
                                                      "echo oops >&2; sleep 600"]},
        {"name": "side", "image": IMAGE, "command": ["sh", "-c", "echo from the side; sleep 600"]}])
    kubectl("wait", "-n", ns, "--for=condition=Ready", "pod/talker", "--timeout=90s", timeout=100)
    logs = wait_for("the log", lambda: kubectl("logs", "-n", ns, "talker", "-c", "main").stdout.count("\n") == 5
                    and kubectl("logs", "-n", ns, "talker", "-c", "main").stdout)
    assert logs == "line 1\nline 2\nline 3\nline 4\noops\n"
    assert kubectl("logs", "-n", ns, "talker", "-c", "side").stdout == "from the side\n"
    assert kubectl("logs", "-n", ns, "talker", "-c", "main", "--tail=2").stdout == "line 4\noops\n"
    assert kubectl("logs", "-n", ns, "talker", "-c", "main", "--since=1h").stdout == logs
    assert kubectl("logs", "-n", ns, "talker", "-c", "main", "--limit-bytes=9").stdout == "line 1\nli"
    stamped = kubectl("logs", "-n", ns, "talker", "-c", "main", "--timestamps").stdout.splitlines()
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z .*", line) for line in stamped)
    assert [line.split(" ", 1)[1] for line in stamped] == logs.splitlines()
    # kubectl picks a container itself (the server would answer 400 without one): the first,
    # or the one the kubectl.kubernetes.io/default-container annotation names.
    first = kubectl("logs", "-n", ns, "talker")
    assert first.stdout == logs and 'Defaulted container "main"' in first.stderr
    kubectl("annotate", "-n", ns, "pod/talker", "kubectl.kubernetes.io/default-container=side")
    assert kubectl("logs", "-n", ns, "talker").stdout == "from the side\n"


def test_logs_previous_and_follow(kubectl: Kubectl, ns: str) -> None:
    apply_pod(kubectl, ns, "crasher", [{"name": "main", "image": IMAGE,
                                        "command": ["sh", "-c", "echo run at $(date +%s%N); exit 1"]}])

    def last_state() -> Any:
        pod = json.loads(kubectl("get", "-n", ns, "pod/crasher", "-o", "json").stdout)
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return statuses[0].get("lastState", {}).get("terminated")

    wait_for("the first run to end and be restarted", last_state, timeout=90)
    previous = kubectl("logs", "-n", ns, "crasher", "--previous").stdout
    assert re.fullmatch(r"run at \d+\n", previous)
    apply_pod(kubectl, ns, "counter", [{"name": "main", "image": IMAGE,
                                        "command": ["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.4; done"]}],
              restartPolicy="Never")
    kubectl("wait", "-n", ns, "--for=jsonpath={.status.phase}=Running", "pod/counter", "--timeout=90s", timeout=100)
    started = time.monotonic()
    followed = kubectl("logs", "-n", ns, "-f", "counter", timeout=60)
    assert followed.stdout == "1\n2\n3\n" and time.monotonic() - started < 30  # ends with the container
    missing = kubectl("logs", "-n", ns, "counter", "--previous", ok=False)
    assert missing.returncode == 1 and 'previous terminated container "main" in pod "counter" not found' in missing.stderr


def test_exec_it_through_a_terminal(control_plane: ControlPlaneProcess, kubectl: Kubectl, ns: str) -> None:
    assert KUBECTL is not None
    apply_pod(kubectl, ns, "shell", [{"name": "main", "image": IMAGE, "command": ["sleep", "600"]}])
    kubectl("wait", "-n", ns, "--for=condition=Ready", "pod/shell", "--timeout=90s", timeout=100)
    done = kubectl("exec", "-n", ns, "shell", "--", "sh", "-c", "echo out; echo err >&2; exit 3", ok=False)
    assert (done.returncode, done.stdout) == (3, "out\n") and "command terminated with exit code 3" in done.stderr
    pid, fd = pty.fork()
    if pid == 0:  # the child: kubectl on a terminal, as a user runs it
        os.environ["KUBECONFIG"] = str(control_plane.kubeconfig)
        os.execvp(KUBECTL, [KUBECTL, "exec", "-it", "-n", ns, "shell", "--", "sh"])
    seen = b""

    def read_until(pattern: bytes, timeout: float = 30) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while not re.search(pattern, seen):
            assert time.monotonic() < deadline, f"no {pattern!r} in {seen[-500:]!r}"
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break

    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        read_until(rb"[#$] ")
        os.write(fd, b"stty size; python3 -c 'print(6*7)'\r")
        read_until(rb"30 100\r\n42\r\n")
        os.write(fd, b"exit 4\r")
        read_until(rb"command terminated with exit code 4")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 4
    finally:
        os.close(fd)
        subprocess.run(["kill", "-9", str(pid)], capture_output=True)
