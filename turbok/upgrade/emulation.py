"""Compatibility versions (KEP-4330): which versions a control-plane binary may emulate.

The rule turbok implements, and where it comes from:

* ``--emulated-version`` makes kube-apiserver, kube-controller-manager and
  kube-scheduler serve the APIs and features of an older minor. It must be
  ``<=`` the binary version and ``>=`` the binary's *floor*:

  - 1.31 and older: no emulation (1.31 has the flag but requires it to equal
    the binary: component-base ``ValidateKubeEffectiveVersion``, v0.32.0).
  - 1.32: the floor is 1.31, i.e. N-1 (component-base v0.32.0
    ``effectiveVersion.Validate``: ``minEmuVer := binaryVersion.SubtractMinor(1)``).
  - 1.33 and newer: the floor is ``max(N-3, 1.31)`` (apiserver
    ``pkg/util/compatibility.kubeEffectiveVersionFloors``, v0.33.0 to v0.37.2;
    1.31 is ``minimumKubeEmulationVersion``).

* The *min compatibility version* is the oldest version whose data and
  behaviour the running control plane stays compatible with, so it is the
  furthest an emulated version may be rolled back. It defaults to
  ``max(emulated - 1, floor)`` (component-base ``SetEmulationVersion``) and can
  be set with ``--min-compatibility-version`` from 1.35 on (component-base
  v0.35.0 registry), within ``[floor, emulated]``.

* cloud-controller-manager (k8s.io/cloud-provider, v0.36.2) has no
  ``--emulated-version``: it follows the apiserver's emulated version by binary.

The 1.35.4, 1.36.3 and 1.37.2 binaries print the same ranges in ``--help`` and
refuse anything else (tests/integration/upgrade/test_binary_facts.py).

Sources: https://github.com/kubernetes/enhancements/tree/master/keps/sig-architecture/4330-compatibility-versions,
https://kubernetes.io/docs/concepts/cluster-administration/compatibility-version/.

Pure functions over ``Version``; called by the skew rules and the planner.
"""

from __future__ import annotations

from dataclasses import dataclass

from turbok.upgrade.errors import PlanRefusedError
from turbok.upgrade.versions import Version

__all__ = [
    "FIRST_EMULATING_MINOR",
    "MIN_COMPAT_FLAG_MINOR",
    "ControlPlaneVersion",
    "can_emulate",
    "default_min_compatibility",
    "emulation_floor",
    "rollback_window",
]

#: The first binary minor whose --emulated-version may differ from the binary.
FIRST_EMULATING_MINOR = 32
#: The first binary minor with a --min-compatibility-version flag.
MIN_COMPAT_FLAG_MINOR = 35
#: No binary can emulate anything older (``minimumKubeEmulationVersion``).
_MINIMUM_EMULATION = Version(1, 31)


def emulation_floor(binary: Version) -> Version | None:
    """The oldest minor ``binary`` can emulate, or None if it cannot emulate at all."""
    if binary.minor < FIRST_EMULATING_MINOR:
        return None
    if binary.minor == FIRST_EMULATING_MINOR:
        return binary.add_minor(-1)
    return max(binary.add_minor(-3), _MINIMUM_EMULATION)


def can_emulate(binary: Version, emulated: Version) -> bool:
    """Whether ``binary`` accepts ``--emulated-version=emulated`` (equal is always fine)."""
    if emulated.same_minor(binary):
        return True
    floor = emulation_floor(binary)
    return floor is not None and floor <= emulated.mm < binary.mm


def default_min_compatibility(binary: Version, emulated: Version) -> Version:
    """The min compatibility version a binary uses when the flag is not set."""
    floor = emulation_floor(binary)
    candidate = emulated.add_minor(-1)
    if floor is not None and candidate < floor:
        return floor
    return candidate


@dataclass(frozen=True)
class ControlPlaneVersion:
    """A control-plane component's versions: binary, emulated and min compatibility.

    ``emulated`` and ``min_compat`` are minors. Use ``of`` to build one with
    the Kubernetes defaults; the constructor does no validation.
    """

    binary: Version
    emulated: Version
    min_compat: Version

    @classmethod
    def of(
        cls, binary: Version, emulated: Version | None = None, min_compat: Version | None = None
    ) -> ControlPlaneVersion:
        """Validate and fill in defaults; raises ``PlanRefusedError`` on an impossible state."""
        emu = (emulated or binary).mm
        if not can_emulate(binary, emu):
            floor = emulation_floor(binary)
            allowed = f"{floor}..{binary.mm}" if floor else f"only {binary.mm} (no emulation before 1.{FIRST_EMULATING_MINOR})"
            raise PlanRefusedError(f"a {binary} binary cannot emulate {emu}: --emulated-version allows {allowed}")
        if min_compat is None:
            mc = default_min_compatibility(binary, emu)
        else:
            mc = min_compat.mm
            floor = emulation_floor(binary) or binary.mm
            if binary.minor < MIN_COMPAT_FLAG_MINOR and mc != default_min_compatibility(binary, emu):
                raise PlanRefusedError(
                    f"--min-compatibility-version exists from 1.{MIN_COMPAT_FLAG_MINOR}; a {binary} binary "
                    f"emulating {emu} is compatible back to {default_min_compatibility(binary, emu)} only"
                )
            if not floor <= mc <= emu:
                raise PlanRefusedError(f"min compatibility version {mc} must be between {floor} and the emulated version {emu}")
        return cls(binary=binary, emulated=emu, min_compat=mc)

    @property
    def emulating(self) -> bool:
        """True when the emulated version is older than the binary."""
        return not self.emulated.same_minor(self.binary)

    def flag(self) -> str:
        """The ``--emulated-version`` to set, or ``"(unset)"`` when it equals the binary."""
        return str(self.emulated) if self.emulating else "(unset)"

    def __str__(self) -> str:
        return f"{self.binary} (emulating {self.emulated})" if self.emulating else str(self.binary)


def rollback_window(cp: ControlPlaneVersion) -> tuple[Version, Version] | None:
    """The minors ``cp`` can roll its emulated version back to, as ``(oldest, newest)``.

    None when nothing is possible: binaries before 1.32 cannot emulate, and a
    control plane already at its min compatibility version has no room.
    """
    if cp.binary.minor < FIRST_EMULATING_MINOR:
        return None
    newest = cp.emulated.add_minor(-1)
    oldest = cp.min_compat
    if oldest > newest:
        return None
    return (oldest, newest)
