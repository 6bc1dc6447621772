"""The keys that tell whether a running, hibernated or snapshotted pod or container is the one asked for:
they compare what a config asks for, never how urgently the runtime goes about it (``cri.MANNER``)."""

from __future__ import annotations

from dataclasses import fields, replace

from turbok.runtime.cri import MANNER, ContainerConfig, PodSandboxConfig, essence
from turbok.runtime.pods import _container_key, _restore_key
from turbok.runtime.pods_gvisor import snapshot_key

POD = PodSandboxConfig(id="tk0123456789abcdef012345", name="p", namespace="default", uid="u1", hostname="p")
CONTAINER = ContainerConfig(name="main", image="python-runtime-sandbox", command=("sleep", "inf"))


def test_every_manner_setting_goes_back_to_its_default() -> None:
    for config in (POD, CONTAINER):
        manners = [f for f in fields(config) if f.metadata.get(MANNER)]
        assert [f.name for f in manners] == ["background"]
        changed = replace(config, **{f.name: not f.default for f in manners})
        assert changed != config and essence(changed) == config


def test_keys_ignore_how_a_pod_boots_and_see_what_it_is() -> None:
    for key in (_restore_key, snapshot_key):
        assert key(replace(POD, background=True)) == key(POD)
        assert key(replace(POD, memory_bytes=2**30)) != key(POD)
    assert _container_key(replace(CONTAINER, background=True)) == _container_key(CONTAINER)
    assert _container_key(replace(CONTAINER, args=("-x",))) != _container_key(CONTAINER)
