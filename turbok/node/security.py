"""A container's effective security context, merged as kubelet merges it, within what gVisor can do.

``security_context(pod, container)`` merges the pod's ``securityContext`` into
the container's (kubelet's ``DetermineEffectiveSecurityContext``: the
container's value wins, field by field) and gives
``turbok.runtime.cri.SecurityContext``:

- ``runAsUser``/``runAsGroup``: passed through; ``supplementalGroups`` plus
  ``fsGroup`` (kubelet adds the fsGroup to every container's groups).
- ``runAsNonRoot``: refused when the effective user is 0 with kubelet's
  messages: ``container's runAsUser breaks non-root policy (pod: "p_ns(uid)",
  container: c)`` or ``container has runAsNonRoot and image will run as root
  (...)``. Without ``runAsUser`` the image's ``USER`` decides (``image_uid``: the
  pulled image's, from ``turbok.node.images``; 0 for the built-in images).
- ``readOnlyRootFilesystem``, ``allowPrivilegeEscalation`` (``false``: no new
  privileges): passed through.
- ``capabilities``: ``drop`` passed through (``ALL`` included); ``add``
  passed through, except the capabilities whose every use gVisor refuses in
  any case (its sentry answers those system calls EPERM or ENOSYS whatever
  the capabilities): ``SYS_MODULE`` (kernel modules), ``SYS_BOOT``
  (reboot/kexec), ``SYS_TIME`` (setting the clock), ``SYS_RAWIO`` (I/O
  ports), ``SYS_PACCT`` (process accounting), ``SYS_TTY_CONFIG`` (vhangup):
  refused, naming them, rather than granted in name only. ``add: [ALL]`` is
  every other capability.
- ``privileged: true``: refused (a privileged container would get the host's
  devices and every capability; a gVisor sandbox has neither to give).
- Pod-level host namespaces (``hostNetwork``...) are refused when the Pod is
  admitted (``turbok.node.podspec.refusals``), not here.
- ``seccompProfile``/``appArmorProfile`` of type ``Localhost``: refused (the
  node cannot load a host profile into gVisor, and running without a profile
  the user asked for would be weaker than asked); ``RuntimeDefault`` and
  ``Unconfined`` are honoured (gVisor's own system-call surface is narrower
  than the runtime default).
- Honoured only in part, each a Warning Event (``SecurityPlan.notes``):
  ``seLinuxOptions`` (no SELinux inside gVisor), ``procMount: Unmasked``
  (gVisor's /proc is its own), ``sysctls`` (not applied), ``fsGroup`` (added to
  the groups; volume files are not re-owned).

A refusal raises ``SecurityError`` (a ``ContainerConfigError``): the pod worker
keeps the container Waiting with reason ``CreateContainerConfigError`` and a
Warning ``Failed`` Event ``Error: <message>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from turbok.api.podtemplate import as_dict
from turbok.node.client import Obj
from turbok.node.env import ContainerConfigError
from turbok.runtime.cri import Capabilities, SecurityContext

__all__ = ["UNSUPPORTED_CAPABILITIES", "SecurityError", "SecurityPlan", "pod_name", "security_context"]

#: Capabilities gVisor cannot give: every system call they guard fails inside it regardless.
UNSUPPORTED_CAPABILITIES = ("SYS_MODULE", "SYS_BOOT", "SYS_TIME", "SYS_RAWIO", "SYS_PACCT", "SYS_TTY_CONFIG")
#: Every capability a container may hold (Linux 5.9+), without the ``CAP_`` prefix kube omits.
_ALL_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
)
#: The AppArmor annotation older Pods use instead of ``appArmorProfile`` (one per container).
_APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io"


class SecurityError(ContainerConfigError):
    """The container must not run as asked; ``str()`` is kubelet's message."""


@dataclass(frozen=True)
class SecurityPlan:
    context: SecurityContext
    #: (reason, message) of each thing honoured only in part: a Warning Event each.
    notes: list[tuple[str, str]] = field(default_factory=list)


def pod_name(pod: Obj) -> str:
    """A pod as kubelet's ``format.Pod`` writes it in messages: ``name_namespace(uid)``."""
    md = as_dict(pod.get("metadata"))
    return f"{md.get('name', '')}_{md.get('namespace', '')}({md.get('uid', '')})"


def _cap(name: object) -> str:
    text = str(name).upper()
    return text[4:] if text.startswith("CAP_") else text


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _profile(kind: str, value: object, container: str) -> None:
    profile = as_dict(value)
    if profile.get("type") == "Localhost":
        raise SecurityError(
            f"container {container}: {kind} profile {profile.get('localhostProfile')!r} of type Localhost "
            f"cannot be loaded into a gVisor sandbox; use type RuntimeDefault (gVisor's own system-call "
            "surface) or Unconfined")


def security_context(pod: Obj, container: Obj, *, image_uid: int | None = 0) -> SecurityPlan:
    """``container``'s effective security context in ``pod``; ``image_uid``: the user the image runs
    as when ``runAsUser`` is not set (None: unknown, a non-numeric ``USER``). Raises ``SecurityError``."""
    spec = as_dict(pod.get("spec"))
    psc = as_dict(spec.get("securityContext"))
    csc = as_dict(container.get("securityContext"))
    name = str(container.get("name", ""))
    notes: list[tuple[str, str]] = []

    if csc.get("privileged"):
        raise SecurityError(f"container {name} is privileged, which a gVisor sandbox cannot give (the host's "
                            "devices and every capability); remove securityContext.privileged")

    def pick(key: str) -> object:
        return csc[key] if csc.get(key) is not None else psc.get(key)

    run_as_user = _int(pick("runAsUser"))
    run_as_group = _int(pick("runAsGroup"))
    if pick("runAsNonRoot") is True:
        if run_as_user is not None:
            if run_as_user == 0:
                raise SecurityError(f"container's runAsUser breaks non-root policy (pod: \"{pod_name(pod)}\", "
                                    f"container: {name})")
        elif image_uid == 0:
            raise SecurityError(f"container has runAsNonRoot and image will run as root (pod: \"{pod_name(pod)}\", "
                                f"container: {name})")
        elif image_uid is None:
            raise SecurityError("container has runAsNonRoot and image has non-numeric user, cannot verify user is "
                                f"non-root (pod: \"{pod_name(pod)}\", container: {name})")

    _profile("seccomp", pick("seccompProfile"), name)
    _profile("AppArmor", pick("appArmorProfile"), name)
    legacy = as_dict(as_dict(pod.get("metadata")).get("annotations")).get(f"{_APPARMOR_ANNOTATION}/{name}")
    if isinstance(legacy, str) and legacy.startswith("localhost/"):
        _profile("AppArmor", {"type": "Localhost", "localhostProfile": legacy.removeprefix("localhost/")}, name)
    if pick("seLinuxOptions"):
        notes.append(("SELinuxNotApplied", f"container {name}: seLinuxOptions are not applied: there is no SELinux "
                                           "inside a gVisor sandbox (its isolation is the sandbox itself)"))
    if csc.get("procMount") == "Unmasked":
        notes.append(("ProcMountNotApplied", f"container {name}: procMount Unmasked is not applied: gVisor serves "
                                             "its own /proc"))
    if psc.get("sysctls"):
        keys = ", ".join(str(as_dict(s).get("name")) for s in psc["sysctls"])
        notes.append(("SysctlsNotApplied", f"sysctls [{keys}] are not applied: a gVisor sandbox has its own kernel "
                                           "settings"))

    groups = [g for g in psc.get("supplementalGroups") or [] if _int(g) is not None]
    fs_group = _int(psc.get("fsGroup"))
    if fs_group is not None:
        if fs_group not in groups:
            groups.append(fs_group)
        notes.append(("FSGroupPartial", f"container {name}: fsGroup {fs_group} is added to the container's groups; "
                                        "volume files are not re-owned to it (emptyDir and local volumes are "
                                        "writable by every user)"))

    caps = as_dict(csc.get("capabilities"))
    add = [_cap(c) for c in caps.get("add") or []]
    drop = [_cap(c) for c in caps.get("drop") or []]
    if "ALL" in add:
        add = [c for c in _ALL_CAPABILITIES if c not in UNSUPPORTED_CAPABILITIES]
    refused = sorted({c for c in add if c in UNSUPPORTED_CAPABILITIES})
    if refused:
        raise SecurityError(f"container {name}: capabilities {', '.join(refused)} cannot be given in a gVisor sandbox "
                            "(it refuses the system calls they guard: kernel modules, reboot, the clock, raw I/O, "
                            "accounting, tty hangup); remove them from securityContext.capabilities.add")
    unknown = sorted({c for c in add + drop if c != "ALL" and c not in _ALL_CAPABILITIES})
    if unknown:
        raise SecurityError(f"container {name}: unknown capabilities {', '.join(unknown)}")

    escalation = csc.get("allowPrivilegeEscalation")
    context = SecurityContext(
        run_as_user=run_as_user,
        run_as_group=run_as_group,
        supplemental_groups=tuple(int(g) for g in groups),
        read_only_root_filesystem=bool(csc.get("readOnlyRootFilesystem")),
        allow_privilege_escalation=escalation is not False,
        capabilities=Capabilities(add=tuple(dict.fromkeys(add)), drop=tuple(dict.fromkeys(drop))),
    )
    return SecurityPlan(context=context, notes=notes)
