"""Component flags: the command lines of kube-apiserver, kube-controller-manager and kube-scheduler,
and the flags and feature gates a target binary refuses to start with.

A binary that meets a flag it no longer has (``unknown flag``), a feature gate
it no longer knows (``unrecognized feature gate``) or a locked gate set to the
other value exits at once, so such a flag is a blocker on the step that
installs that binary (removed flags and gates) or raises ``--emulated-version``
to that release (locks follow the emulated version, KEP-4330). The facts are
``data/components.yaml``, read off the binaries themselves; releases it has no
data for are reported as not checked rather than as clean.

Where the flags come from: ``read_flag_files`` reads kubeadm static Pod
manifests (``/etc/kubernetes/manifests/*.yaml``) and kubeadm
``ClusterConfiguration`` files (``extraArgs``); the cluster reader collects the
command lines of control-plane Pods. Pure apart from reading those files.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from turbok.upgrade.errors import DataError, ManifestError
from turbok.upgrade.versions import Version, parse_version

__all__ = [
    "COMPONENTS",
    "ComponentFlags",
    "ComponentsData",
    "FlagProblem",
    "components_data",
    "parse_args",
    "read_flag_files",
]

COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
_SOURCE = "turbok/upgrade/data/components.yaml (read off the Kubernetes binaries)"


@dataclass
class ComponentFlags:
    """Each component's flags (``name -> value``, value ``""`` for a bare flag) and feature gates."""

    flags: dict[str, dict[str, str]] = field(default_factory=dict)
    gates: dict[str, dict[str, bool]] = field(default_factory=dict)
    origins: list[str] = field(default_factory=list)
    etcd_image: str = ""  # the image of an etcd static Pod found beside them, if any

    def add(self, component: str, args: Iterable[str], origin: str) -> None:
        flags, gates = parse_args(args)
        self.flags.setdefault(component, {}).update(flags)
        self.gates.setdefault(component, {}).update(gates)
        self.origins.append(origin)

    def __bool__(self) -> bool:
        return any(self.flags.values()) or any(self.gates.values())


def parse_args(args: Iterable[str]) -> tuple[dict[str, str], dict[str, bool]]:
    """``--name=value``, ``--name value`` and bare ``--name`` flags, and ``--feature-gates`` as a dict.

    ``--feature-gates`` may repeat and may name a component (``kube:Gate=true``).
    """
    flags: dict[str, str] = {}
    gates: dict[str, bool] = {}
    items = list(args)
    i = 0
    while i < len(items):
        a = items[i]
        i += 1
        if not a.startswith("--"):
            continue
        name, eq, value = a[2:].partition("=")
        if not eq and i < len(items) and not items[i].startswith("-"):
            value = items[i]
            i += 1
        flags[name] = value
        if name == "feature-gates":
            for pair in value.split(","):
                gate, _, on = pair.strip().partition("=")
                component, colon, bare = gate.partition(":")
                if colon and component != "kube":
                    continue  # another component's gate (wardle:...), not Kubernetes'
                gates[(bare if colon else gate).strip()] = on.strip().lower() == "true"
    flags.pop("feature-gates", None)
    return flags, gates


def _static_pod(doc: dict[str, Any], out: ComponentFlags, origin: str) -> bool:
    containers = ((doc.get("spec") or {}).get("containers")) or []
    found = False
    for c in containers:
        if not isinstance(c, dict):
            continue
        cmd = [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
        names = {str(c.get("name", "")), *(Path(x).name for x in cmd[:1])}
        if "etcd" in names and not out.etcd_image:
            out.etcd_image = str(c.get("image", ""))
        for component in COMPONENTS:
            if component in names:
                out.add(component, cmd, f"{origin} ({component})")
                found = True
    return found


def _extra_args(value: Any) -> list[str]:
    """kubeadm ``extraArgs``: a map (v1beta3) or a list of ``{name, value}`` (v1beta4)."""
    if isinstance(value, dict):
        return [f"--{k}={v}" for k, v in value.items()]
    if isinstance(value, list):
        return [f"--{a.get('name')}={a.get('value', '')}" for a in value if isinstance(a, dict)]
    return []


def _cluster_configuration(doc: dict[str, Any], out: ComponentFlags, origin: str) -> bool:
    sections = {"apiServer": "kube-apiserver", "controllerManager": "kube-controller-manager",
                "scheduler": "kube-scheduler"}
    for key, component in sections.items():
        args = _extra_args((doc.get(key) or {}).get("extraArgs"))
        if args:
            out.add(component, args, f"{origin} ({key}.extraArgs)")
    gates = doc.get("featureGates")
    if isinstance(gates, dict) and gates:
        value = ",".join(f"{k}={str(v).lower()}" for k, v in gates.items())
        for component in COMPONENTS:
            out.add(component, [f"--feature-gates={value}"], f"{origin} (featureGates)")
    return True


def read_flag_files(paths: Sequence[str]) -> ComponentFlags:
    """Flags from static Pod manifests and kubeadm ClusterConfiguration files (files or directories)."""
    out = ComponentFlags()
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise ManifestError("no such file or directory", path=raw)
        files = sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml", ".json")) if p.is_dir() else [p]
        for f in files:
            try:
                docs = list(yaml.safe_load_all(f.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as e:
                raise ManifestError(f"cannot read: {e}", path=str(f)) from e
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                raise ManifestError(f"invalid YAML: {getattr(e, 'problem', e)}", path=str(f),
                                    line=mark.line + 1 if mark else 0) from e
            for doc in docs:
                if not isinstance(doc, dict):
                    continue
                if doc.get("kind") == "Pod":
                    _static_pod(doc, out, str(f))
                elif doc.get("kind") == "ClusterConfiguration":
                    _cluster_configuration(doc, out, str(f))
    return out


@dataclass(frozen=True)
class FlagProblem:
    """A flag or gate that stops ``component`` at ``binary`` (emulating ``emulated``)."""

    component: str
    subject: str
    message: str
    source: str = _SOURCE


@dataclass(frozen=True)
class ComponentsData:
    """Removed flags, removed gates and locked gates per release (``data/components.yaml``)."""

    removed_gates: dict[Version, frozenset[str]]
    removed_flags: dict[Version, dict[str, frozenset[str]]]
    locked_gates: dict[Version, dict[str, bool]]
    binaries: tuple[str, ...]

    def covers_removals(self, release: Version) -> bool:
        """Whether the data knows what ``release`` removed (it had the previous minor's binary too)."""
        return release.mm in self.removed_gates

    def problems(self, flags: ComponentFlags, *, old_binary: Version, binary: Version,
                 emulated: Version) -> list[FlagProblem]:
        """What stops each component when it moves from ``old_binary`` to ``binary`` emulating ``emulated``."""
        out: list[FlagProblem] = []
        crossed = [r for r in sorted(self.removed_gates) if old_binary.mm < r <= binary.mm]
        locks = self.locked_gates.get(emulated.mm, {})
        for component in COMPONENTS:
            given = flags.flags.get(component, {})
            gates = flags.gates.get(component, {})
            for r in crossed:
                for name in sorted(set(given) & self.removed_flags[r].get(component, frozenset())):
                    out.append(FlagProblem(component, f"{component} --{name}",
                                           f"{component} {binary.mm} has no --{name} flag (removed in {r}): it exits "
                                           f"with \"unknown flag: --{name}\"; drop the flag before this step"))
                for name in sorted(set(gates) & self.removed_gates[r]):
                    out.append(FlagProblem(component, f"{component} feature gate {name}",
                                           f"feature gate {name} was removed in {r}: {component} {binary.mm} exits "
                                           f"with \"unrecognized feature gate: {name}\"; remove it from --feature-gates "
                                           "before this step"))
            for name, value in sorted(gates.items()):
                if name in locks and locks[name] != value:
                    out.append(FlagProblem(component, f"{component} feature gate {name}",
                                           f"feature gate {name} is locked to {str(locks[name]).lower()} at {emulated.mm}: "
                                           f"{component} exits with \"cannot set feature gate {name} to "
                                           f"{str(value).lower()}\"; remove it from --feature-gates before this step"))
        return out


def _load(data: dict[str, Any]) -> ComponentsData:
    try:
        removed_gates: dict[Version, frozenset[str]] = {}
        removed_flags: dict[Version, dict[str, frozenset[str]]] = {}
        locked: dict[Version, dict[str, bool]] = {}
        for k, r in data["releases"].items():
            v = parse_version(str(k), what="data/components.yaml").mm
            if "removedFeatureGates" in r:
                removed_gates[v] = frozenset(str(g) for g in r["removedFeatureGates"] or [])
                removed_flags[v] = {c: frozenset(str(f) for f in (r.get("removedFlags") or {}).get(c) or [])
                                    for c in COMPONENTS}
            locked[v] = {str(g): bool(val) for g, val in (r.get("lockedFeatureGates") or {}).items()}
        return ComponentsData(removed_gates, removed_flags, locked, tuple(str(b) for b in data["binaries"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"turbok/upgrade/data/components.yaml is malformed: {e}") from e


@functools.cache
def components_data() -> ComponentsData:
    """The packaged data (read once)."""
    text = resources.files("turbok.upgrade").joinpath("data/components.yaml").read_text(encoding="utf-8")
    return _load(yaml.safe_load(text))
