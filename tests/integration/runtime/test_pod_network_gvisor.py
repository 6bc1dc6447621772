"""gVisor on the pod network: runsc --network=sandbox in the namespace ``PodNetwork.setup`` made.

The bundle is the smallest that shows it (the built-in image's rootfs read-only,
a Python server); the pod runtime builds real ones the same way: the namespace's
path in ``linux.namespaces``, ``runsc_prefix`` before the runsc command.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.runtime.conftest import IMAGE
from tests.integration.runtime.podnet import (
    Networks,
    accepted,
    link_namespaces,
    listen,
    namespace,
    require_root_network,
    unique_network_args,
)
from turbok.runtime import netlink, netns
from turbok.runtime.images import ImageStore
from turbok.runtime.network import Attachment, PodNetwork, runsc_prefix

pytestmark = pytest.mark.integration

SERVER = """
import socket, socketserver
class Hello(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"hello from " + socket.gethostname().encode() + b"\\n")
socketserver.TCPServer.allow_reuse_address = True
socketserver.TCPServer(("0.0.0.0", 8080), Hello).serve_forever()
"""

PROBE = """
import json, socket, sys, threading
out = {}
def attempt(target):
    host, port = target.rsplit(":", 1)
    try:
        s = socket.create_connection((host, int(port)), timeout=1.5)
        s.sendall(b"from the pod")
        s.close()
        out[target] = "connected"
    except ConnectionRefusedError:
        out[target] = "refused"
    except OSError:
        out[target] = "no answer"
threads = [threading.Thread(target=attempt, args=(t,)) for t in sys.argv[1:]]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""


class Runsc:
    def __init__(self, root: Path, rootfs: Path) -> None:
        self.root, self.rootfs = root, rootfs
        self.runsc = shutil.which("runsc") or "runsc"
        self.started: list[str] = []

    def bundle(self, name: str, netns_path: Path | None) -> Path:
        path = self.root / "bundles" / name
        path.mkdir(parents=True, exist_ok=True)
        net: dict[str, str] = {"type": "network"}
        if netns_path is not None:
            net["path"] = str(netns_path)
        config = {
            "ociVersion": "1.0.0",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["python3", "-c", SERVER],
                        "env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "cwd": "/"},
            "root": {"path": str(self.rootfs), "readonly": True},
            "hostname": name,
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [{"type": "pid"}, net, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]},
        }
        (path / "config.json").write_text(json.dumps(config))
        return path

    def run_argv(self, id: str, bundle: Path) -> list[str]:
        return [self.runsc, f"--root={self.root / 'state'}", "--network=sandbox", "run", "--detach",
                f"--bundle={bundle}", id]

    def boot(self, id: str, attachment: Attachment) -> None:
        bundle = self.bundle(id, attachment.netns)
        self.started.append(id)
        with open(self.root / f"{id}.log", "ab") as log:
            subprocess.run([*runsc_prefix(attachment.netns), *self.run_argv(id, bundle)], stdin=subprocess.DEVNULL,
                           stdout=log, stderr=log, check=True, timeout=60)

    def exec(self, id: str, *argv: str) -> str:
        return subprocess.run([self.runsc, f"--root={self.root / 'state'}", "exec", id, *argv],
                              capture_output=True, text=True, check=True, timeout=60).stdout

    def delete(self, id: str) -> None:
        subprocess.run([self.runsc, f"--root={self.root / 'state'}", "delete", "--force", id],
                       capture_output=True, timeout=60)


@pytest.fixture
def runsc(tmp_path: Path, images: ImageStore) -> Iterator[Runsc]:
    require_root_network()
    if shutil.which("runsc") is None:
        pytest.skip("runsc not installed (Debian package runsc)")
    r = Runsc(tmp_path / "runsc", images.resolve(IMAGE).rootfs)
    yield r
    for id in r.started:
        r.delete(id)


@pytest.fixture
def networks(tmp_path: Path) -> Iterator[Networks]:
    made = Networks(tmp_path / "net")
    yield made
    made.cleanup()


async def hello(net: PodNetwork, target: str, timeout: float = 20.0) -> bytes:
    """The pod server's greeting over ``PodNetwork.connect``, waiting for Python to start in gVisor."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reader, writer = await net.connect(target, 8080)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        try:
            return await asyncio.wait_for(reader.readline(), 10)
        finally:
            writer.close()


def eth0_ipv4(path: Path) -> list[str]:
    def read() -> list[str]:
        with netlink.Netlink() as nl:
            link = nl.link("eth0")
            return [] if link is None else [str(a.ip) for a in nl.addresses(link.index)
                                            if isinstance(a.ip, ipaddress.IPv4Interface)]

    return netns.call_in(path, read)


async def test_a_gvisor_pod_serves_the_host_and_reaches_only_the_hosts_listed_port(
        runsc: Runsc, networks: Networks) -> None:
    open_port, closed_port = 20700 + os.getpid() % 1000, 21700 + os.getpid() % 1000
    net = networks.make(host_ports=(open_port,))
    pod = net.setup("gv-a")
    other = net.setup("gv-b")  # another pod (the kernel's stack, listening)
    tag = unique_network_args()["name"]
    with namespace(f"{tag}-out") as outside:
        uplink = ipaddress.IPv4Network(f"10.222.{os.getpid() % 250}.0/30")
        link_namespaces(None, outside, left_ip=f"{uplink[1]}/30", right_ip=f"{uplink[2]}/30", name=f"{tag}u")
        runsc.boot("gvnet-a", pod)
        assert await hello(net, "gv-a") == b"hello from gvnet-a\n"
        # runsc's netstack took the address away from the namespace's kernel (the reason setup runs before
        # every boot).
        assert eth0_ipv4(pod.netns) == []
        with listen(None, open_port, pod.gateway) as allowed, listen(None, closed_port, pod.gateway) as refused, \
                listen(other.netns, 8080) as neighbour, listen(outside, 443) as world:
            got = json.loads(runsc.exec("gvnet-a", "python3", "-c", PROBE, f"{pod.gateway}:{open_port}",
                                        f"{pod.gateway}:{closed_port}", f"{other.ip}:8080", f"{uplink[2]}:443",
                                        f"{uplink[1]}:22"))
            assert got == {
                f"{pod.gateway}:{open_port}": "connected",  # the host's listed port
                f"{pod.gateway}:{closed_port}": "no answer",  # a host port not listed, though it listens
                f"{other.ip}:8080": "no answer",  # another pod
                f"{uplink[2]}:443": "no answer",  # a network off the bridge
                f"{uplink[1]}:22": "no answer",  # another address of the host
            }
            assert (accepted(allowed), accepted(refused), accepted(neighbour), accepted(world)) == (1, 0, 0, 0)


async def test_a_second_boot_in_the_namespace_needs_setup_again(runsc: Runsc, networks: Networks) -> None:
    net = networks.make()
    pod = net.setup("gv-a")
    runsc.boot("gvnet-b", pod)
    assert await hello(net, pod.ip) == b"hello from gvnet-b\n"
    runsc.delete("gvnet-b")
    assert eth0_ipv4(pod.netns) == []  # runsc never gives the address back
    assert net.setup("gv-a") == pod
    assert eth0_ipv4(pod.netns) == [f"{pod.ip}/{pod.prefix}"]
    runsc.boot("gvnet-b", pod)
    assert await hello(net, "gv-a") == b"hello from gvnet-b\n"
    runsc.delete("gvnet-b")
    net.teardown("gv-a")


def test_runsc_prefix_keeps_runscs_refusal_to_take_the_hosts_own_interfaces(runsc: Runsc, networks: Networks) -> None:
    """A bundle naming the host's own namespace must still be refused: runsc would take the host's addresses.

    Played in a stand-in host namespace, so a failure could only take the stand-in's address.
    """
    net = networks.make()
    pod = net.setup("gv-a")
    tag = unique_network_args()["name"]
    with namespace(f"{tag}-host") as host, namespace(f"{tag}-peer") as peer:
        link_namespaces(host, peer, left_ip="10.221.0.1/30", right_ip="10.221.0.2/30", name="up0")

        def stand_in_addresses() -> list[str]:
            with netlink.Netlink() as nl:
                return [str(a.ip) for a in nl.addresses() if isinstance(a.ip, ipaddress.IPv4Interface)]

        bundle = runsc.bundle("gvnet-c", host)  # the pod's path mixed up with the host's
        runsc.started.append("gvnet-c")
        done = subprocess.run(["nsenter", f"--net={host}", *runsc_prefix(pod.netns),
                               *runsc.run_argv("gvnet-c", bundle)], capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        assert "root network namespace" in done.stderr
        assert "10.221.0.1/30" in netns.call_in(host, stand_in_addresses)
