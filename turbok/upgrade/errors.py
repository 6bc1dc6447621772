"""The errors of the upgrade planner and API checker, and nothing else.

Every one of them is a usage or input error: the CLI prints its message as one
line and exits 1, which CI can tell apart from the findings codes (0 clean,
2 deprecated, 3 removed or skew violation); ``turbok upgrade rehearse`` exits 2
for them (its 1 means a step failed). ``ScratchError`` inside a rehearsal is a
failed check, not an error. Messages say what was wrong and what to do instead.

    TurbokError
     └── UpgradeError
          ├── VersionError            a version string that is not a Kubernetes version
          │    └── UnknownVersionError  a well-formed version turbok has no data for
          ├── PlanRefusedError        no safe plan exists (rollback beyond the emulation window...)
          ├── ManifestError           a manifest that cannot be read or parsed (names file:line)
          ├── ClusterError            the cluster could not be read (kubeconfig, HTTP, TLS)
          ├── AssetsError             the binaries given to a rehearsal are missing or unusable
          ├── ScratchError            a scratch control plane (etcd, kube-apiserver...) did not start
          └── DataError               the packaged data file is broken (a bug in turbok)

Only this module's classes are raised out of ``turbok.upgrade``; third-party
errors (yaml, httpx, json) are mapped with ``raise ... from``.
"""

from __future__ import annotations

from turbok.errors import TurbokError

__all__ = [
    "AssetsError",
    "ClusterError",
    "DataError",
    "ManifestError",
    "PlanRefusedError",
    "ScratchError",
    "UnknownVersionError",
    "UpgradeError",
    "VersionError",
]


class UpgradeError(TurbokError):
    """Root of the upgrade part's errors."""


class VersionError(UpgradeError):
    """A string that is not a Kubernetes version (``1.32``, ``1.32.4``, ``v1.32.4-eks-1``)."""


class UnknownVersionError(VersionError):
    """A well-formed version that turbok's release data does not know."""


class PlanRefusedError(UpgradeError):
    """The requested change has no safe plan; the message says why and what is possible."""


class ManifestError(UpgradeError):
    """A manifest could not be read or parsed.

    ``path`` and ``line`` (1-based, or 0 when unknown) locate the problem.
    """

    def __init__(self, message: str, *, path: str = "", line: int = 0) -> None:
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class ClusterError(UpgradeError):
    """The cluster named by the kubeconfig could not be read."""


class AssetsError(UpgradeError):
    """The binaries named by ``--assets`` are missing, of the wrong version, or cannot be run."""


class ScratchError(UpgradeError):
    """A process of a scratch control plane did not start or become ready; the message has its last log lines."""


class DataError(UpgradeError):
    """turbok's packaged upgrade data is missing or malformed (a bug: please report it)."""
