"""Pod sandboxes for the router's integration tests: a pod runtime on a pod network of the test process' own.

``Boxes(root)`` makes a ``GvisorPodRuntime`` under ``root`` on a ``PodNetwork`` with a range and names unique
to the test process (``tests.integration.runtime.podnet``), where the machine can make one (root and nft);
else the pods get no address and the router reaches them through ``runsc exec``. ``start(name)`` runs a pod
of one container ``main`` (the built-in runtime image) the way the node runs a Sandbox's Pod, and returns
its id. ``close()`` removes every pod and the network.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

from turbok.runtime.base_image import base_image_info, build_base_image
from turbok.runtime.cri import ContainerConfig, PodSandboxConfig
from turbok.runtime.ids import sandbox_id
from turbok.runtime.images import BASE_IMAGE, ImageStore
from turbok.runtime.pods import release_root
from turbok.runtime.pods_gvisor import GvisorPodRuntime
from turbok.sandboxd.injection import agent_injection

IMAGE = BASE_IMAGE


def _network(root: Path) -> Any:
    if os.geteuid() != 0 or shutil.which("nft") is None:
        return None
    from tests.integration.runtime.podnet import Networks

    networks = Networks(root / "net")
    net = networks.make()
    net.ensure_host()
    return networks, net


class Boxes:
    def __init__(self, root: Path, *, network: bool = True) -> None:
        store = ImageStore()
        if base_image_info(store) is None:
            build_base_image(store)  # once per machine; about 30 s (mmdebstrap from a Debian mirror)
        self.root = root
        made = _network(root) if network else None
        self._networks, self.network = made if made else (None, None)
        self.runtime = GvisorPodRuntime(root / "pods", store, network=self.network)
        self.runtime.injection = agent_injection(store, root / "agent")
        self.ids: list[str] = []

    def config(self, name: str, **kw: Any) -> PodSandboxConfig:
        fields: dict[str, Any] = {
            "id": sandbox_id(f"sandboxd-it-{name}-{self.root.name}"), "name": name, "namespace": "default",
            "uid": f"uid-{name}", "hostname": name, "network": self.network is not None, "single_container": True,
            "annotations": {"turbok.dev/sandbox-identity": f"uid-{name}"}, "agent_container": "main",
            "agent_ports": (8080, 9090), "agent_on_demand": False}
        fields.update(kw)
        return PodSandboxConfig(**fields)

    async def boot(self, config: PodSandboxConfig, image: str = IMAGE, *, runtime: GvisorPodRuntime | None = None
                   ) -> str:
        rt = runtime or self.runtime
        await rt.run_pod_sandbox(config)
        await rt.start_container(config.id, ContainerConfig("main", image))
        return config.id

    def twin(self) -> GvisorPodRuntime:
        """Another runtime over the same pods (for another thread's event loop)."""
        twin = GvisorPodRuntime(self.root / "pods", self.runtime.images, network=self.network)
        twin.injection = self.runtime.injection
        return twin

    def start(self, name: str, **kw: Any) -> str:
        config = self.config(name, **kw)
        sid = asyncio.run(self.boot(config))
        self.ids.append(sid)
        return sid

    def ip(self, sid: str) -> str:
        return asyncio.run(self.runtime.pod_sandbox_status(sid)).ip

    def close(self) -> None:
        async def clean() -> None:
            await asyncio.gather(*(self.runtime.remove_pod_sandbox(i) for i in await self.runtime.list_pod_sandboxes()),
                                 return_exceptions=True)

        asyncio.run(clean())
        release_root(self.root / "pods")
        if self._networks is not None:
            self._networks.cleanup()
