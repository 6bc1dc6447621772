"""An image's run configuration: the ``config`` of its OCI image config (entrypoint, cmd, env, user...).

``ImageConfig.parse(data)`` reads the JSON of an OCI (or Docker) image config;
``resolve_user(rootfs)`` turns its ``User`` (``uid``, ``name``, ``uid:gid``,
``name:group``) into numbers with the image's own ``/etc/passwd`` and
``/etc/group``, read inside the root filesystem (``turbok.runtime.layers.read_in_root``).
``policy_uid`` is what the kubelet checks ``runAsNonRoot`` against: 0 for no
``User``, the number for a numeric one, None for a name (it cannot verify those).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ImageConfig"]


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""
    exposed_ports: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    os: str = ""
    architecture: str = ""
    created: str = ""

    @classmethod
    def parse(cls, data: bytes | Mapping[str, Any]) -> ImageConfig:
        doc: Any = json.loads(data) if isinstance(data, bytes) else data
        if not isinstance(doc, Mapping):
            raise ValueError("image config is not a JSON object")
        cfg = doc.get("config") or {}
        if not isinstance(cfg, Mapping):
            raise ValueError("image config's 'config' is not an object")
        env: dict[str, str] = {}
        for item in _strings(cfg.get("Env")):
            key, eq, value = item.partition("=")
            if key and eq:
                env[key] = value
        labels = cfg.get("Labels")
        labels = labels if isinstance(labels, Mapping) else {}
        ports = cfg.get("ExposedPorts")
        ports = ports if isinstance(ports, Mapping) else {}
        return cls(
            entrypoint=_strings(cfg.get("Entrypoint")),
            cmd=_strings(cfg.get("Cmd")),
            env=env,
            working_dir=str(cfg.get("WorkingDir") or ""),
            user=str(cfg.get("User") or ""),
            stop_signal=str(cfg.get("StopSignal") or ""),
            exposed_ports=tuple(sorted(str(p) for p in ports)),
            labels={str(k): str(v) for k, v in labels.items()},
            os=str(doc.get("os") or ""),
            architecture=str(doc.get("architecture") or ""),
            created=str(doc.get("created") or ""),
        )

    @property
    def policy_uid(self) -> int | None:
        """The kubelet's view for ``runAsNonRoot``: 0 (no user), the uid when numeric, None for a name."""
        user = self.user.split(":", 1)[0]
        if not user:
            return 0
        return int(user) if user.isdigit() else None

    def resolve_user(self, rootfs: Path) -> tuple[int | None, int | None, str]:
        """``(uid, gid, error)``: the numbers ``User`` names in this image (None: not set; ``error`` says
        which name the image's passwd/group files lack)."""
        if not self.user:
            return None, None, ""
        from turbok.runtime.layers import read_in_root

        user, _, group = self.user.partition(":")
        uid: int | None = int(user) if user.isdigit() else None
        gid: int | None = int(group) if group.isdigit() else None
        if uid is None or (gid is None and not group):
            passwd = _table(read_in_root(rootfs, "/etc/passwd"))
            for row in passwd:
                if len(row) >= 4 and (row[0] == user or (uid is not None and row[2] == str(uid))):
                    if uid is None and row[2].isdigit():
                        uid = int(row[2])
                    if gid is None and not group and row[3].isdigit():
                        gid = int(row[3])
                    break
            if uid is None:
                return None, None, f"unable to find user {user}: no matching entries in passwd file"
        if group and gid is None:
            for row in _table(read_in_root(rootfs, "/etc/group")):
                if len(row) >= 3 and row[0] == group and row[2].isdigit():
                    gid = int(row[2])
                    break
            else:
                return uid, None, f"unable to find group {group}: no matching entries in group file"
        return uid, gid, ""


def _table(data: bytes | None) -> list[list[str]]:
    if not data:
        return []
    return [line.split(":") for line in data.decode("utf-8", "replace").splitlines() if line and line[0] != "#"]
