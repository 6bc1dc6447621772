"""What runs in a sandbox and how: the main process, and runsc's OCI ``config.json``.

``main_process(spec, image)`` applies Kubernetes' rules to the pod template's
container: ``command`` replaces the image's entrypoint (our images have none)
and ``args`` its default command; with neither, the image's default command
runs. The environment is ``PATH``/``HOME``/``HOSTNAME``, then the image's
(``SANDBOX_BASE_DIR=/app`` for the base image), then the template's. Shared
by both runtimes.

``oci_config(...)`` is the bundle of one gVisor sandbox: the overlay rootfs
(writable: its upper layer is the sandbox's own), ``/app`` and the volumes as
bind mounts of host directories, hostname, Docker's default capabilities (all
of them gVisor's, none the host's) and the limits: ``cpu_millis`` -> CFS quota,
``memory_bytes`` -> memory limit, and a pids limit (the spec's, else the
runtime's) so a fork bomb cannot exhaust the host's pid space. Called by
``turbok.runtime.gvisor``; written to disk once per start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turbok.runtime.base import WORKDIR_MOUNT, SandboxSpec
from turbok.runtime.errors import InvalidSandboxSpec
from turbok.runtime.images import ResolvedImage
from turbok.runtime.layout import SandboxDir, hostname_of

__all__ = [
    "CFS_PERIOD_US",
    "DEFAULT_PATH",
    "MainProcess",
    "cpu_quota_us",
    "main_process",
    "network_mode",
    "oci_config",
    "validate_env",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CFS_PERIOD_US = 100_000
_NOFILE = 65536
# Docker's default set less NET_RAW and MKNOD; inside gVisor these act on the
# sandbox's own kernel only.
_CAPS = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
]
_NETWORKS = ("none", "loopback")


@dataclass(frozen=True)
class MainProcess:
    argv: list[str]
    env: dict[str, str]
    cwd: str


def main_process(spec: SandboxSpec, image: ResolvedImage) -> MainProcess:
    if spec.command:
        argv = [*spec.command, *spec.args]
    elif spec.args:
        argv = list(spec.args)
    else:
        argv = list(image.command)
    if not argv:
        raise InvalidSandboxSpec(f"sandbox {spec.id}: no command, and image {image.reference!r} has none")
    env = {"PATH": DEFAULT_PATH, "HOME": "/root", "HOSTNAME": hostname_of(spec)}
    env.update(image.env)
    env.update(spec.env)
    validate_env(spec.id, env)
    cwd = spec.working_dir or image.working_dir or "/"
    if not cwd.startswith("/"):
        raise InvalidSandboxSpec(f"sandbox {spec.id}: workingDir {cwd!r} must be absolute")
    return MainProcess(argv=argv, env=env, cwd=cwd)


def validate_env(id: str, env: Mapping[str, str]) -> None:
    """Refuse names with ``=`` and NULs anywhere: they cannot be passed through exec(2)."""
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidSandboxSpec(f"sandbox {id}: invalid environment variable {key!r}")


def network_mode(spec: SandboxSpec) -> str:
    """runsc's ``--network`` for the spec: ``none`` = a private loopback and nothing else."""
    if spec.network not in _NETWORKS:
        raise InvalidSandboxSpec(
            f"sandbox {spec.id}: network {spec.network!r} is not supported here (want one of {_NETWORKS})"
        )
    return "none"


def cpu_quota_us(cpu_millis: int) -> int:
    # The kernel refuses quotas under 1 ms.
    return max(1000, cpu_millis * CFS_PERIOD_US // 1000)


def _resources(spec: SandboxSpec, pids_limit: int | None) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if spec.cpu_millis is not None:
        if spec.cpu_millis <= 0:
            raise InvalidSandboxSpec(f"sandbox {spec.id}: cpu limit must be positive")
        res["cpu"] = {"quota": cpu_quota_us(spec.cpu_millis), "period": CFS_PERIOD_US}
    if spec.memory_bytes is not None:
        if spec.memory_bytes < 32 * 1024 * 1024:
            raise InvalidSandboxSpec(f"sandbox {spec.id}: memory limit under 32Mi cannot boot a sandbox")
        res["memory"] = {"limit": spec.memory_bytes}
    pids = spec.pids_limit if spec.pids_limit is not None else pids_limit
    if pids is not None:
        res["pids"] = {"limit": pids}
    return res


def oci_config(
    spec: SandboxSpec,
    image: ResolvedImage,
    sdir: SandboxDir,
    *,
    pids_limit: int | None,
    cgroup_parent: str,
) -> dict[str, Any]:
    proc = main_process(spec, image)
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": WORKDIR_MOUNT, "type": "bind", "source": str(sdir.app), "options": ["rbind", "rw"]},
    ]
    for v in spec.volumes:
        mounts.append(
            {
                "destination": v.mount_path,
                "type": "bind",
                "source": str(sdir.volume(v.name)),
                "options": ["rbind", "ro" if v.read_only else "rw"],
            }
        )
    return {
        "ociVersion": "1.0.0",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": proc.argv,
            "env": [f"{k}={v}" for k, v in proc.env.items()],
            "cwd": proc.cwd,
            "capabilities": {k: _CAPS for k in ("bounding", "effective", "inheritable", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": _NOFILE, "soft": _NOFILE}],
        },
        "root": {"path": str(sdir.rootfs), "readonly": False},
        "hostname": hostname_of(spec),
        "mounts": mounts,
        "linux": {
            "resources": _resources(spec, pids_limit),
            "cgroupsPath": f"{cgroup_parent.rstrip('/')}/{spec.id}",
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
        },
    }
