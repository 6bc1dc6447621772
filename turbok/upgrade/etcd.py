"""etcd versions: which etcd minor each Kubernetes minor runs with, and how etcd may move.

``data/etcd.yaml`` holds the etcd minor kubeadm installs with each Kubernetes
minor (``SupportedEtcdVersion``). etcd's own policy allows one etcd minor per
upgrade, from the newest patch of the current minor (``sources.ETCD_UPGRADE_POLICY``).
The planner uses ``etcd_path`` to add etcd steps, one etcd minor each, before
the kube-apiserver step that needs the newer etcd; the checker flags an etcd
older than the target's. Versions are ``Version`` objects with major 3.

Pure functions over the packaged data (read once).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from turbok.upgrade.errors import DataError, VersionError
from turbok.upgrade.versions import Version

__all__ = ["EtcdData", "etcd_data", "parse_etcd_version"]

_ETCD_RE = re.compile(r"^\s*v?(3)\.(\d+)(?:\.(\d+))?(?:[-+][0-9A-Za-z.+-]*)?\s*$")


def parse_etcd_version(text: str, *, what: str = "--etcd-version") -> Version:
    """``3.5.24``, ``v3.6.5`` or an image tag like ``3.5.24-0``; raises ``VersionError`` otherwise."""
    m = _ETCD_RE.match(text or "")
    if m is None:
        raise VersionError(f"{what}: {text!r} is not an etcd 3.x version (e.g. 3.5.24 or 3.6)")
    return Version(3, int(m.group(2)), int(m.group(3)) if m.group(3) is not None else None)


@dataclass(frozen=True)
class EtcdData:
    """The etcd minor of each Kubernetes minor."""

    by_kubernetes: dict[Version, Version]
    as_of: str

    def minor_for(self, kubernetes: Version) -> Version | None:
        """The etcd minor kubeadm installs with ``kubernetes``'s minor (None when the data has no entry)."""
        return self.by_kubernetes.get(kubernetes.mm)

    def path(self, current: Version, kubernetes: Version) -> list[Version]:
        """The etcd minors to pass through, one at a time, so ``kubernetes`` runs on its etcd (empty: none).

        An etcd already newer than kubeadm's for ``kubernetes`` stays as it is.
        """
        want = self.minor_for(kubernetes)
        if want is None or current.mm >= want:
            return []
        return [Version(3, m) for m in range(current.minor + 1, want.minor + 1)]


def _load(data: dict[str, Any]) -> EtcdData:
    try:
        table: dict[Version, Version] = {}
        for k, v in data["kubernetes"].items():
            kube = Version(1, int(str(k).split(".")[1]))
            table[kube] = parse_etcd_version(str(v), what=f"data/etcd.yaml {k}")
        return EtcdData(table, str(data["asOf"]))
    except (KeyError, TypeError, ValueError, IndexError, VersionError) as e:
        raise DataError(f"turbok/upgrade/data/etcd.yaml is malformed: {e}") from e


@functools.cache
def etcd_data() -> EtcdData:
    """The packaged table (read once)."""
    text = resources.files("turbok.upgrade").joinpath("data/etcd.yaml").read_text(encoding="utf-8")
    return _load(yaml.safe_load(text))
