"""What runs in a pod's containers and how: their processes, and runsc's OCI ``config.json`` for each.

``container_process`` applies Kubernetes' rules to a ``ContainerConfig``:
``command`` replaces the image's entrypoint (our images have none), ``args`` its
default command; with neither, the image's default command. Environment:
``PATH``, ``HOME`` (the user's, from the image's ``/etc/passwd``), ``HOSTNAME``,
``TERM`` for a terminal, then the image's, then the container's. The user is
``runAsUser``/``runAsGroup`` (else root, our images' user) with
``supplementalGroups``; capabilities are the runtime's default set with the
container's ``add``/``drop`` applied (``ALL`` drops every one), effective only
for root as a kernel gives them; ``allowPrivilegeEscalation: false`` is
``noNewPrivileges``.

``container_bundle`` is one container's OCI spec: its overlay root (read-only
with ``readOnlyRootFilesystem``), ``/proc``, ``/dev``, ``/sys``, the pod's
volumes at their mount paths, the pod's hostname and the limits. Three shapes:

- ``solo``: the container is the root of its own sandbox (pods whose containers
  run one at a time), with the pod's limits and network namespace;
- ``pause``: the root of a multi-container pod's sandbox, an idle process on the
  base image, read-only, unprivileged, with the pod's limits and network;
- ``sub``: a container joining a pause sandbox (CRI annotations
  ``io.kubernetes.cri.container-type: container`` and ``sandbox-id``). runsc
  20221219 does not bound a subcontainer on its own (one host process runs
  them all), so its limits are noted, not set.

Pure functions of their inputs, so they are unit-tested without runsc.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turbok.runtime.cri import ContainerConfig, PodSandboxConfig, SecurityContext
from turbok.runtime.errors import InvalidSandboxSpec
from turbok.runtime.images import ResolvedImage
from turbok.runtime.layers import read_in_root

__all__ = [
    "ANNOTATION_SANDBOX_ID",
    "ANNOTATION_TYPE",
    "CFS_PERIOD_US",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_PATH",
    "KNOWN_CAPABILITIES",
    "MIN_MEMORY",
    "PAUSE_COMMAND",
    "ContainerProcess",
    "MountSpec",
    "capabilities",
    "container_bundle",
    "container_process",
    "cpu_quota_us",
    "hostname_of",
    "pause_bundle",
    "resources",
    "user_home",
    "validate_env",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CFS_PERIOD_US = 100_000

ANNOTATION_TYPE = "io.kubernetes.cri.container-type"
ANNOTATION_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
#: The pause container's process: it only keeps the sandbox alive.
PAUSE_COMMAND = ("/bin/sleep", "infinity")
#: Under this a gVisor sandbox cannot boot.
MIN_MEMORY = 32 * 1024 * 1024
_NOFILE = 65536
_HOSTNAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_PAUSE_USER = 65534
#: Docker's default set less NET_RAW and MKNOD; inside gVisor these act on the sandbox's own kernel only.
DEFAULT_CAPABILITIES = (
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
)
#: Every Linux capability (5.x), the names ``add``/``drop`` may use (with or without ``CAP_``).
KNOWN_CAPABILITIES = frozenset(f"CAP_{c}" for c in ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"])
#: Capabilities runsc 20221219 removes from every process unless it runs with ``--net-raw``.
_GVISOR_WITHHELD = frozenset({"CAP_NET_RAW"})


@dataclass(frozen=True)
class MountSpec:
    """One resolved mount of a container: a host path (or a memory volume's tmpfs) at ``destination``."""

    destination: str
    source: Path
    read_only: bool = False


@dataclass(frozen=True)
class ContainerProcess:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    uid: int
    gid: int
    groups: list[int]
    capabilities: list[str]
    no_new_privileges: bool
    terminal: bool
    notes: list[str]


def validate_env(id: str, env: Mapping[str, str]) -> None:
    """Refuse names with ``=`` and NULs anywhere: they cannot be passed through exec(2)."""
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidSandboxSpec(f"sandbox {id}: invalid environment variable {key!r}")


def cpu_quota_us(cpu_millis: int) -> int:
    # The kernel refuses quotas under 1 ms.
    return max(1000, cpu_millis * CFS_PERIOD_US // 1000)


def hostname_of(pod: PodSandboxConfig) -> str:
    """The pod's hostname, cut to 63 characters as Kubernetes does."""
    name = pod.hostname[:63].rstrip("-.")
    if not _HOSTNAME.fullmatch(name):
        raise InvalidSandboxSpec(f"pod {pod.id}: hostname {pod.hostname!r} is not a DNS name")
    return name


def capabilities(security: SecurityContext, *, withheld: frozenset[str] = _GVISOR_WITHHELD,
                 default: Sequence[str] = DEFAULT_CAPABILITIES) -> tuple[list[str], list[str]]:
    """The bounding set for ``security`` and notes on what could not be given."""

    def norm(name: str) -> str:
        cap = name.upper()
        cap = cap if cap.startswith("CAP_") else f"CAP_{cap}"
        if cap != "CAP_ALL" and cap not in KNOWN_CAPABILITIES:
            raise InvalidSandboxSpec(f"unknown capability {name!r}")
        return cap

    drop = {norm(c) for c in security.capabilities.drop}
    add = {norm(c) for c in security.capabilities.add}
    # containerd's order: drop ALL clears, add (ALL: every one), then the single drops.
    caps = set() if "CAP_ALL" in drop else set(default)
    caps |= KNOWN_CAPABILITIES if "CAP_ALL" in add else add
    caps -= drop
    notes = [f"capability {cap.removeprefix('CAP_')} is not available in this sandbox"
             for cap in sorted(caps & withheld & add)]
    return sorted(caps - withheld), notes


def user_home(rootfs: Path, uid: int) -> tuple[str, int | None]:
    """``HOME`` and primary group of ``uid`` from the image's ``/etc/passwd`` (``/`` and None if absent)."""
    if uid == 0:
        home, gid = "/root", 0
    else:
        home, gid = "/", None
    data = None
    with contextlib.suppress(OSError):  # read as the sandbox sees it: an image's symlink never reaches the host
        data = read_in_root(rootfs, "/etc/passwd")
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) >= 6 and parts[2].isdigit() and int(parts[2]) == uid:
            return parts[5] or "/", int(parts[3]) if parts[3].isdigit() else gid
    return home, gid


def container_process(pod: PodSandboxConfig, container: ContainerConfig, image: ResolvedImage, *,
                      withheld: frozenset[str] = _GVISOR_WITHHELD) -> ContainerProcess:
    if container.command:  # Kubernetes: command replaces the image's entrypoint and drops its cmd
        argv = [*container.command, *container.args]
    elif container.args:  # args alone replace the image's cmd
        argv = [*image.entrypoint, *container.args]
    else:
        argv = list(image.command)
    if not argv:
        raise InvalidSandboxSpec(f"container {container.name}: no command, and image {image.reference!r} has none")
    sec = container.security
    if sec.run_as_user is None and image.user_error:  # the image's USER names no one in its passwd file
        raise InvalidSandboxSpec(f"container {container.name}: {image.user_error}")
    uid = sec.run_as_user if sec.run_as_user is not None else (image.uid or 0)  # else the image's USER
    home, passwd_gid = user_home(image.rootfs, uid)
    image_gid = image.gid if sec.run_as_user is None else None
    gid = sec.run_as_group if sec.run_as_group is not None else (
        image_gid if image_gid is not None else (passwd_gid or 0))
    for what, value in (("runAsUser", uid), ("runAsGroup", gid), *(("supplementalGroups", g) for g in
                                                                     sec.supplemental_groups)):
        if not 0 <= value < 2**31 - 1:
            raise InvalidSandboxSpec(f"container {container.name}: {what} {value} is out of range")
    env = {"PATH": DEFAULT_PATH, "HOME": home, "HOSTNAME": hostname_of(pod)}
    if container.tty:
        env["TERM"] = "xterm"
    env.update(image.env)
    env.update(container.env)
    validate_env(container.name, env)
    cwd = container.working_dir or image.working_dir or "/"
    if not cwd.startswith("/"):
        raise InvalidSandboxSpec(f"container {container.name}: workingDir {cwd!r} must be absolute")
    caps, notes = capabilities(sec, withheld=withheld)
    return ContainerProcess(
        argv=argv, env=env, cwd=cwd, uid=uid, gid=gid, groups=sorted(set(sec.supplemental_groups)),
        capabilities=caps, no_new_privileges=not sec.allow_privilege_escalation, terminal=container.tty,
        notes=notes,
    )


def resources(*, cpu_millis: int | None, memory_bytes: int | None, pids: int | None, what: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if cpu_millis is not None:
        if cpu_millis <= 0:
            raise InvalidSandboxSpec(f"{what}: cpu limit must be positive")
        res["cpu"] = {"quota": cpu_quota_us(cpu_millis), "period": CFS_PERIOD_US}
    if memory_bytes is not None:
        if memory_bytes < MIN_MEMORY:
            raise InvalidSandboxSpec(f"{what}: memory limit under 32Mi cannot boot a gVisor sandbox")
        res["memory"] = {"limit": memory_bytes}
    if pids is not None:
        if pids < 64:
            raise InvalidSandboxSpec(f"{what}: a pids limit under 64 cannot boot a sandbox")
        res["pids"] = {"limit": pids}
    return res


def _oci_process(proc: ContainerProcess) -> dict[str, Any]:
    caps = proc.capabilities
    effective = caps if proc.uid == 0 else []  # a non-root process holds none, as after execve
    return {
        "terminal": proc.terminal,
        "user": {"uid": proc.uid, "gid": proc.gid, **({"additionalGids": proc.groups} if proc.groups else {})},
        "args": proc.argv,
        "env": [f"{k}={v}" for k, v in proc.env.items()],
        "cwd": proc.cwd,
        "capabilities": {"bounding": caps, "effective": effective, "inheritable": effective,
                         "permitted": effective},
        "noNewPrivileges": proc.no_new_privileges,
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": _NOFILE, "soft": _NOFILE}],
    }


def _namespaces(netns: Path | None) -> list[dict[str, str]]:
    spaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    spaces.insert(1, {"type": "network", "path": str(netns)} if netns is not None else {"type": "network"})
    return spaces


def _base_mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]


def container_bundle(pod: PodSandboxConfig, container: ContainerConfig, proc: ContainerProcess, *,
                     rootfs: Path, mounts: Sequence[MountSpec], shape: str, cgroups_path: str | None,
                     pids_limit: int | None, netns: Path | None,
                     annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The OCI spec of one container (``shape``: ``solo`` or ``sub``; see the module docstring)."""
    if shape not in ("solo", "sub"):
        raise ValueError(shape)
    oci_mounts = _base_mounts()
    for m in mounts:
        oci_mounts.append({"destination": m.destination, "type": "bind", "source": str(m.source),
                           "options": ["rbind", "ro" if m.read_only else "rw"]})
    spec: dict[str, Any] = {
        "ociVersion": "1.0.0",
        "process": _oci_process(proc),
        "root": {"path": str(rootfs), "readonly": container.security.read_only_root_filesystem},
        "hostname": hostname_of(pod),
        "mounts": oci_mounts,
        "annotations": dict(annotations or {}),
        "linux": {"namespaces": _namespaces(netns)},
    }
    if cgroups_path is not None:
        spec["linux"]["cgroupsPath"] = cgroups_path
    if shape == "solo":
        spec["linux"]["resources"] = resources(
            cpu_millis=pod.cpu_millis if pod.cpu_millis is not None else container.cpu_millis,
            memory_bytes=pod.memory_bytes if pod.memory_bytes is not None else container.memory_bytes,
            pids=pod.pids_limit if pod.pids_limit is not None else pids_limit,
            what=f"pod {pod.id}",
        )
    else:
        spec["annotations"].update({ANNOTATION_TYPE: "container", ANNOTATION_SANDBOX_ID: pod.id})
    return spec


def pause_bundle(pod: PodSandboxConfig, *, rootfs: Path, cgroups_path: str, pids_limit: int | None,
                 netns: Path | None) -> dict[str, Any]:
    """The OCI spec of a multi-container pod's root: an idle, unprivileged process on a read-only root."""
    return {
        "ociVersion": "1.0.0",
        "process": {
            "user": {"uid": _PAUSE_USER, "gid": _PAUSE_USER},
            "args": list(PAUSE_COMMAND),
            "env": [f"PATH={DEFAULT_PATH}"],
            "cwd": "/",
            "capabilities": {k: [] for k in ("bounding", "effective", "inheritable", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": hostname_of(pod),
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "annotations": {ANNOTATION_TYPE: "sandbox", ANNOTATION_SANDBOX_ID: pod.id},
        "linux": {
            "resources": resources(cpu_millis=pod.cpu_millis, memory_bytes=pod.memory_bytes,
                                   pids=pod.pids_limit if pod.pids_limit is not None else pids_limit,
                                   what=f"pod {pod.id}"),
            "cgroupsPath": cgroups_path,
            "namespaces": _namespaces(netns),
        },
    }
