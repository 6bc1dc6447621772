"""Safe control-plane upgrades: skew-checked plans with emulated versions, and API checks.

What belongs here (one module per noun):

* ``versions``   Kubernetes versions and the catalog of known releases (``data/releases.yaml``)
* ``emulation``  KEP-4330 compatibility versions: what a binary may emulate, rollback windows
* ``skew``       the version skew policy, in terms of emulated versions, as checks
* ``sources``    what upstream and vendors say about upgrades and rollbacks, quoted word for word
* ``plan``       the shape of a plan: states, steps, who supports each step and each rollback
* ``planner``    building upgrade and rollback plans, each step proven against ``skew``
* ``steps``      the runbook text of each kind of step
* ``apis``       the deprecated/removed API data (``data/deprecated_apis.yaml``, with sources)
* ``components`` component flags, and the flags and feature gates a binary refuses (``data/components.yaml``)
* ``etcd``       the etcd minor each Kubernetes minor runs with, one etcd minor per step (``data/etcd.yaml``)
* ``manifests``  objects out of YAML/JSON files, Helm output and Lists
* ``checker``    findings (removed/deprecated/off-by-default APIs, skew, feature gates) and exit codes
* ``cluster``    reading a live cluster over its REST API (``connect`` reads the kubeconfig
  through ``turbok.client.kubeconfig``)
* ``assets``     the user's own Kubernetes binaries: where, which version, what each accepts
* ``scratch``    a scratch control plane on loopback (etcd, kube-apiserver, controllers)
* ``rehearsal``  a plan run step by step, with its rollbacks, on the user's binaries
* ``report``     tables for people, dicts for JSON
* ``errors``     this part's error tree

It is a client of the clusters it checks: it never imports ``turbok.store``,
``turbok.apiserver`` or ``turbok.controllers``. The CLI is ``turbok.cli.upgrade``;
docs/upgrade.md states the rules implemented and their sources.
"""

from turbok.upgrade.apis import ApiCatalog, ApiStatus, api_catalog
from turbok.upgrade.assets import Assets, BinarySet, find_assets
from turbok.upgrade.checker import CheckReport, Finding, FindingKind, Severity, check_objects, exit_code
from turbok.upgrade.components import ComponentFlags, read_flag_files
from turbok.upgrade.emulation import ControlPlaneVersion, can_emulate, emulation_floor, rollback_window
from turbok.upgrade.errors import (
    AssetsError,
    ClusterError,
    DataError,
    ManifestError,
    PlanRefusedError,
    ScratchError,
    UnknownVersionError,
    UpgradeError,
    VersionError,
)
from turbok.upgrade.manifests import ManifestObject, read_manifests
from turbok.upgrade.plan import ClusterState, Plan, Rollback, Step, StepKind, Support
from turbok.upgrade.planner import PlanRequest, Strategy, make_plan, start_state
from turbok.upgrade.rehearsal import Rehearsal, rehearse
from turbok.upgrade.scratch import ScratchControlPlane
from turbok.upgrade.skew import ClusterVersions, Component, Instance, SkewViolation, check_skew
from turbok.upgrade.versions import ReleaseCatalog, Version, catalog, parse_version

__all__ = [
    "ApiCatalog",
    "ApiStatus",
    "Assets",
    "AssetsError",
    "BinarySet",
    "CheckReport",
    "ClusterError",
    "ClusterState",
    "ClusterVersions",
    "Component",
    "ComponentFlags",
    "ControlPlaneVersion",
    "DataError",
    "Finding",
    "FindingKind",
    "Instance",
    "ManifestError",
    "ManifestObject",
    "Plan",
    "PlanRefusedError",
    "PlanRequest",
    "Rehearsal",
    "ReleaseCatalog",
    "Rollback",
    "ScratchControlPlane",
    "ScratchError",
    "Severity",
    "SkewViolation",
    "Step",
    "StepKind",
    "Strategy",
    "Support",
    "UnknownVersionError",
    "UpgradeError",
    "Version",
    "VersionError",
    "api_catalog",
    "can_emulate",
    "catalog",
    "check_objects",
    "check_skew",
    "emulation_floor",
    "exit_code",
    "find_assets",
    "make_plan",
    "parse_version",
    "read_flag_files",
    "read_manifests",
    "rehearse",
    "rollback_window",
    "start_state",
]
