"""Shared fixtures: a real turbok control plane on loopback, and where images live.

``control_plane`` (session-scoped) runs ``turbok serve`` as a subprocess with
its own temporary TURBOK_HOME, exactly as a user would, and yields its
endpoints. ``make_control_plane`` starts extra ones (restarts, isolation).
Images are shared across homes through TURBOK_IMAGES (built once by
scripts/setup.sh; default ``~/.turbok/images``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TURBOK_IMAGES", str(Path("~/.turbok/images").expanduser()))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runsc", default="default", metavar="default|shared|PATH",
                     help="the runsc every sandbox of this run uses (sets TURBOK_RUNSC, subprocesses too): default "
                          "(TURBOK_RUNSC as it is, else Debian's runsc), shared (../shared/gvisor's current one) or a "
                          "path; see tests/gvisor_binaries.py")


def pytest_configure(config: pytest.Config) -> None:
    from tests.gvisor_binaries import resolve

    chosen = resolve(config.getoption("--runsc"))
    if chosen is not None:
        os.environ["TURBOK_RUNSC"] = chosen


@dataclass
class ControlPlaneProcess:
    home: Path
    api_url: str = ""
    router_url: str = ""
    token: str = ""  # the API's bearer token
    router_token: str = ""  # the router's own, sent as Authorization: Bearer (never in a URL)
    kubeconfig: Path = field(default_factory=Path)
    proc: subprocess.Popen[bytes] | None = None
    #: more ``turbok serve`` arguments (``--simulated-gpus 2``)
    args: tuple[str, ...] = ()

    @property
    def router_headers(self) -> dict[str, str]:
        """The official client's ``extra_headers`` for this control plane's router."""
        return {"Authorization": f"Bearer {self.router_token}"}

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TURBOK_HOME": str(self.home), "KUBECONFIG": str(self.kubeconfig)}

    def start(self, timeout: float = 60.0) -> ControlPlaneProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        endpoints = self.home / "endpoints.json"
        endpoints.unlink(missing_ok=True)
        with open(self.home / "turbok.log", "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "turbok", "serve", *self.args], env={**os.environ, "TURBOK_HOME": str(self.home)},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"turbok serve exited: {(self.home / 'turbok.log').read_text()[-3000:]}")
            try:
                data = json.loads(endpoints.read_text())
            except (OSError, ValueError):
                time.sleep(0.05)
                continue
            if data.get("pid") == self.proc.pid:
                self.api_url, self.router_url = data["api"], data["router"]
                self.kubeconfig = Path(data["kubeconfig"])
                self.token = (self.home / "token").read_text().strip()
                self.router_token = (self.home / "router-token").read_text().strip()
                return self
            time.sleep(0.05)
        raise RuntimeError("turbok serve did not come up")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def purge(self) -> None:
        """Stop the control plane and remove every sandbox it left running."""
        from turbok.embedded.daemon import stop_sandboxes
        from turbok.home import Home
        from turbok.runtime.pods import release_root

        self.stop()
        stop_sandboxes(Home(self.home), remove=True)
        # The runtimes' nosuid binds (the pod runtime's and the old one's), where a last removal found them busy;
        # one still busy now (a loop device letting go) is left as before.
        for root in (self.home / "pods", self.home / "sandboxes"):
            with contextlib.suppress(OSError):
                release_root(root)

    def log(self) -> str:
        return (self.home / "turbok.log").read_text()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(tmp_path_factory.mktemp("turbok-home")).start()
    yield cp
    cp.purge()


@pytest.fixture
def make_control_plane(tmp_path: Path) -> Iterator[Callable[..., ControlPlaneProcess]]:
    started: list[ControlPlaneProcess] = []

    def make(home: Path | None = None, args: tuple[str, ...] = ()) -> ControlPlaneProcess:
        cp = ControlPlaneProcess(home or tmp_path / f"home{len(started)}", args=args).start()
        started.append(cp)
        return cp

    yield make
    for cp in started:
        cp.purge()
