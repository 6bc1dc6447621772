"""Container Device Interface specs: what a prepared device means for a container.

A DRA driver answers ``NodePrepareResources`` with CDI device ids
(``vendor.com/class=name``) and writes the specs naming them into a CDI
directory (``/etc/cdi``, ``/var/run/cdi``, and turbok's own drivers'
``<state>/cdi``). ``CdiRegistry.edits(ids)`` reads them (JSON or YAML, at the
moment of the call: a driver may have just written its spec) and merges each
device's ``containerEdits`` with its spec's:

- ``env`` (``KEY=VALUE``): later devices win, as in CDI, except the
  ``*_VISIBLE_DEVICES`` lists, which are joined with commas (two devices of one
  claim, or two claims, each setting ``TURBOK_VISIBLE_DEVICES`` give the
  container both; CDI alone would keep the last);
- ``deviceNodes``: the host's node (``hostPath``, else ``path``) with its
  type and numbers read from the host when the spec leaves them out;
- ``mounts``: host paths bind-mounted (``ro`` in the options: read-only);
- ``hooks`` and ``intelRdt``/``additionalGIDs``: not honoured (gVisor runs no
  host hooks in a sandbox); each is a note the node turns into an Event.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from turbok.errors import TurbokError
from turbok.runtime.cri import DeviceNode

__all__ = ["DEFAULT_CDI_DIRS", "CdiError", "CdiRegistry", "Edits", "HostMount"]

DEFAULT_CDI_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))


class CdiError(TurbokError):
    """A CDI device id no spec names, or a spec that cannot be read."""


@dataclass(frozen=True)
class HostMount:
    host_path: str
    container_path: str
    read_only: bool = False


@dataclass
class Edits:
    env: dict[str, str] = field(default_factory=dict)
    devices: list[DeviceNode] = field(default_factory=list)
    mounts: list[HostMount] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def merge(self, edits: dict[str, Any], where: str) -> None:
        for item in edits.get("env") or []:
            key, _, value = str(item).partition("=")
            if key.endswith("_VISIBLE_DEVICES") and self.env.get(key) and value:
                have = self.env[key].split(",")
                value = ",".join([*have, *[v for v in value.split(",") if v not in have]])
            self.env[key] = value
        for node in edits.get("deviceNodes") or []:
            self.devices.append(_device_node(node, where))
        for mount in edits.get("mounts") or []:
            options = [str(o) for o in mount.get("options") or []]
            self.mounts.append(HostMount(str(mount["hostPath"]), str(mount["containerPath"]), "ro" in options))
        for key in ("hooks", "intelRdt", "additionalGIDs"):
            if edits.get(key):
                self.notes.append(f"{where}: CDI {key} are not honoured in a gVisor sandbox")


def _device_node(node: dict[str, Any], where: str) -> DeviceNode:
    path = str(node.get("path") or "")
    if not path:
        raise CdiError(f"{where}: a device node without a path")
    host = str(node.get("hostPath") or path)
    kind, major, minor = node.get("type"), node.get("major"), node.get("minor")
    if kind is None or major is None or minor is None:
        try:
            st = os.stat(host)
        except OSError as e:
            raise CdiError(f"{where}: device node {host}: {e.strerror}") from None
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise CdiError(f"{where}: {host} is not a device node")
        kind = kind or ("c" if stat.S_ISCHR(st.st_mode) else "b")
        major = os.major(st.st_rdev) if major is None else major
        minor = os.minor(st.st_rdev) if minor is None else minor
    return DeviceNode(path=path, host_path=host, type=str(kind), major=int(major), minor=int(minor),
                      permissions=str(node.get("permissions") or "rwm"), file_mode=node.get("fileMode"),
                      uid=node.get("uid"), gid=node.get("gid"))


class CdiRegistry:
    def __init__(self, dirs: Sequence[Path] = DEFAULT_CDI_DIRS) -> None:
        self.dirs = list(dirs)

    def _specs(self) -> Iterable[tuple[Path, dict[str, Any]]]:
        for folder in self.dirs:
            try:
                entries = sorted(folder.iterdir())
            except OSError:
                continue
            for path in entries:
                if path.suffix not in (".json", ".yaml", ".yml"):
                    continue
                try:
                    text = path.read_text()
                    spec = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
                except (OSError, ValueError, yaml.YAMLError):
                    continue  # a spec being written, or not a spec: CDI skips it too
                if isinstance(spec, dict) and isinstance(spec.get("kind"), str):
                    yield path, spec

    def edits(self, ids: Iterable[str]) -> Edits:
        """The merged container edits of the devices ``ids`` (``vendor/class=name``), in order."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return Edits()
        found: dict[str, tuple[dict[str, Any], dict[str, Any], Path]] = {}
        for path, spec in self._specs():
            for dev in spec.get("devices") or []:
                key = f"{spec['kind']}={dev.get('name')}"
                if key in wanted and key not in found:
                    found[key] = (spec, dev, path)
        missing = [i for i in wanted if i not in found]
        if missing:
            raise CdiError(f"unresolvable CDI devices {', '.join(missing)} (looked in "
                           f"{', '.join(str(d) for d in self.dirs)})")
        out = Edits()
        applied: set[Path] = set()
        for key in wanted:
            spec, dev, path = found[key]
            if path not in applied:
                applied.add(path)
                out.merge(spec.get("containerEdits") or {}, str(path))
            out.merge(dev.get("containerEdits") or {}, key)
        return out
