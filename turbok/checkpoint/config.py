"""Agent settings, and how a CheckpointConfiguration becomes them.

Sources, later ones overriding earlier ones: defaults; a YAML/JSON file or a
dict, either a ``CheckpointConfiguration`` object (``kind`` set, fields under
``spec``) or flat settings (the ``Settings`` field names); the
``CheckpointConfiguration`` named NAME read from a Kubernetes-compatible API
(``GET /apis/checkpointing.turbok.dev/v1/checkpointconfigurations/NAME`` with
the bearer token of a kubeconfig); command-line flags.

Mapping from the resource's spec (GKE's field names where they make sense):

==========================  ==========================================
spec                        Settings
==========================  ==========================================
storageURL                  storage_url (s3://, gs://, az://, file://)
cloudStorageBucketName      storage_url = gs://NAME (GKE's field)
storageOptions              storage_options (endpoint, region, ...)
inMemoryVolumeSize          memory_size (a Kubernetes quantity)
replicationFactor           replication_factor
backupInterval              backup_interval_s (a duration: 90s, 5m, 1h)
backupEverySteps            backup_every_steps
retention.inMemory          keep_memory
retention.localDisk         keep_disk
retention.objectStorage     keep_object_last
retention.objectStorageKeepEvery  keep_object_every
localDiskPath, inMemoryPath disk_dir, memory_dir
jobMemoryQuota              job_memory_quota (a quantity; 0: none)
diskQuota                   disk_quota (a quantity; 0: none)
leaseTimeout                lease_timeout_s (a duration)
port                        listen = 0.0.0.0:PORT in the DaemonSet
nodeSelector, tolerations,  used by the operator (operator.py) for the
image, hostNetwork,         agents' DaemonSet; agents ignore them
tokenSecretRef
==========================  ==========================================
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from turbok.api import quantity
from turbok.checkpoint.errors import ConfigError

__all__ = ["GROUP", "KIND", "PLURAL", "Settings", "fetch_configuration", "parse_duration", "parse_quantity"]

GROUP = "checkpointing.turbok.dev"
KIND = "CheckpointConfiguration"
PLURAL = "checkpointconfigurations"

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_quantity(value: Any, *, what: str = "quantity") -> int:
    """Bytes from a Kubernetes quantity ("512Mi", "10Gi", "1G") or an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        amount = quantity.parse_quantity(str(value))
    except quantity.QuantityError:
        amount = None
    if amount is None or amount < 0 or amount != amount.to_integral_value():
        raise ConfigError(f"{what}: {value!r} is not a byte quantity (use e.g. 512Mi, 10Gi)")
    return int(amount)


def parse_duration(value: Any, *, what: str = "duration") -> float:
    """Seconds from "90s", "5m", "1h30m", or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"{what}: {value!r} is not a duration (use e.g. 30s, 5m, 1h)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass
class Settings:
    """Everything a node agent needs; see the module docstring for the sources."""

    memory_dir: str = "/dev/shm/turbok-checkpoint"
    disk_dir: str = field(default_factory=lambda: str(Path(os.environ.get("TURBOK_HOME") or Path.home() / ".turbok") / "checkpoints"))
    memory_size: int = 4 << 30
    listen: str = "127.0.0.1:7480"
    metrics_listen: str = ""  # "127.0.0.1:9480" to serve Prometheus metrics; "" for none
    advertise: str = ""  # the address peers know this agent by (default: listen)
    peers: list[str] = field(default_factory=list)
    replication_factor: int = 1
    storage_url: str = ""
    storage_options: dict[str, Any] = field(default_factory=dict)
    backup_every_steps: int = 0
    backup_interval_s: float = 0.0
    keep_memory: int = 1
    keep_disk: int = 2
    keep_object_last: int = 2
    keep_object_every: int = 0
    staging_timeout_s: float = 120.0
    object_retry_timeout_s: float = 60.0
    object_max_retries: int = 10
    backup_retry_max_s: float = 300.0
    token: str = ""
    node_name: str = field(default_factory=socket.gethostname)
    #: a lease (acquire -> staged) not staged by then is void and its part dropped
    lease_timeout_s: float = 600.0
    #: bytes of the memory tier one job may hold (0: no quota); see docs/checkpoint.md "Quotas"
    job_memory_quota: int = 0
    #: bytes the disk tier may hold in all (0: no quota)
    disk_quota: int = 0
    #: peers from the Kubernetes API (discovery.py): the CheckpointConfiguration's name; "" for none
    discover: str = ""
    discover_namespace: str = "turbok-checkpoint"
    discover_interval_s: float = 10.0
    kubeconfig: str = ""
    #: this agent's Pod (downward API), to publish its tiers in an annotation
    pod_name: str = ""
    #: fault injection for tests: stage name -> seconds to sleep there (see agent.py)
    fault_delays: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.memory_size = parse_quantity(self.memory_size, what="memory_size")
        self.job_memory_quota = parse_quantity(self.job_memory_quota, what="job_memory_quota")
        self.disk_quota = parse_quantity(self.disk_quota, what="disk_quota")
        self.backup_interval_s = parse_duration(self.backup_interval_s, what="backup_interval")
        self.lease_timeout_s = parse_duration(self.lease_timeout_s, what="lease_timeout")
        if self.lease_timeout_s <= 0:
            raise ConfigError("leaseTimeout must be positive")
        if self.replication_factor < 0 or self.backup_every_steps < 0:
            raise ConfigError("replicationFactor and backupEverySteps must not be negative")
        if min(self.keep_memory, self.keep_disk, self.keep_object_last) < 1:
            raise ConfigError("retention must keep at least one step on every tier")

    @property
    def self_address(self) -> str:
        """The address peers know this agent by: ``advertise``, else ``listen``."""
        return self.advertise or self.listen

    # -- sources --------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: dict[str, Any], base: Settings | None = None) -> Settings:
        """Settings from a CheckpointConfiguration object or a flat mapping, over ``base``."""
        if not isinstance(doc, dict):
            raise ConfigError(f"checkpoint configuration must be a mapping, got {type(doc).__name__}")
        values = asdict(base) if base is not None else {}
        if "kind" in doc:
            if doc.get("kind") != KIND:
                raise ConfigError(f"expected kind {KIND}, got {doc.get('kind')!r}")
            values.update(_from_spec(doc.get("spec") or {}))
        else:
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(doc) - known)
            if unknown:
                raise ConfigError(f"unknown checkpoint settings: {', '.join(unknown)}")
            values.update(doc)
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"checkpoint settings: {e}") from e

    @classmethod
    def from_file(cls, path: Path | str, base: Settings | None = None) -> Settings:
        try:
            doc = yaml.safe_load(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read checkpoint configuration {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
        return cls.from_dict(doc or {}, base)


def _from_spec(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.get("cloudStorageBucketName"):
        out["storage_url"] = f"gs://{spec['cloudStorageBucketName']}"
    simple = {
        "storageURL": "storage_url",
        "storageOptions": "storage_options",
        "inMemoryVolumeSize": "memory_size",
        "replicationFactor": "replication_factor",
        "backupEverySteps": "backup_every_steps",
        "backupInterval": "backup_interval_s",
        "localDiskPath": "disk_dir",
        "inMemoryPath": "memory_dir",
        "peers": "peers",
        "jobMemoryQuota": "job_memory_quota",
        "diskQuota": "disk_quota",
        "leaseTimeout": "lease_timeout_s",
    }
    for src, dst in simple.items():
        if spec.get(src) not in (None, ""):
            out[dst] = spec[src]
    retention = spec.get("retention") or {}
    for src, dst in {"inMemory": "keep_memory", "localDisk": "keep_disk", "objectStorage": "keep_object_last", "objectStorageKeepEvery": "keep_object_every"}.items():
        if retention.get(src) is not None:
            out[dst] = retention[src]
    return out


def fetch_configuration(name: str, *, kubeconfig: Path | str | None, timeout: float = 10.0) -> dict[str, Any]:
    """GET a CheckpointConfiguration from the API server a kubeconfig points at.

    Without ``kubeconfig``: turbok's own, then ``$KUBECONFIG`` and ``~/.kube/config``, then the
    Pod's service account (an agent of the operator's DaemonSet).
    """
    from turbok.api import status as st
    from turbok.client.api import Api
    from turbok.client.errors import ConnectionFailed, KubeconfigError
    from turbok.client.kubeconfig import load_kubeconfig

    # the project's one REST client (turbok.client.api): its transport, 429 policy and Status mapping
    try:
        cluster = load_kubeconfig(kubeconfig, turbok_home=kubeconfig is None)
        client = Api(cluster, timeout=timeout, user_agent="turbok-checkpoint")
    except KubeconfigError as e:
        raise ConfigError(f"kubeconfig {kubeconfig}: {e}") from e
    server = cluster.server
    try:
        with client:
            response = client.send("GET", f"/apis/{GROUP}/v1/{PLURAL}/{name}")
    except ConnectionFailed as e:
        raise ConfigError(f"cannot reach the API server at {server}: {e}") from e
    except st.NotFound as e:
        raise ConfigError(f"{KIND} {name!r} not found at {server}") from e
    except st.ApiError as e:
        raise ConfigError(f"reading {KIND} {name!r} from {server}: {e.reason}: {e.message[:200]}") from e
    doc = response.json()
    if not isinstance(doc, dict):
        raise ConfigError(f"{KIND} {name!r}: the API server sent a non-object")
    return doc
