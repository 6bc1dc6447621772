"""Safe control-plane upgrades: skew-checked plans with emulated versions, and API checks.

What belongs here (one module per noun):

* ``versions``   Kubernetes versions and the catalog of known releases (``data/releases.yaml``)
* ``emulation``  KEP-4330 compatibility versions: what a binary may emulate, rollback windows
* ``skew``       the version skew policy, in terms of emulated versions, as checks
* ``plan``       the shape of a plan: states, steps, rollback points
* ``planner``    building upgrade and rollback plans, each step proven against ``skew``
* ``steps``      the runbook text of each kind of step
* ``apis``       the deprecated/removed API data (``data/deprecated_apis.yaml``, with sources)
* ``manifests``  objects out of YAML/JSON files, Helm output and Lists
* ``checker``    findings (removed/deprecated APIs, skew, feature gates) and exit codes
* ``cluster``    reading a live cluster over its REST API (``connect`` reads the kubeconfig
  through ``turbok.client.kubeconfig``)
* ``report``     tables for people, dicts for JSON
* ``errors``     this part's error tree

It is a client of the clusters it checks: it never imports ``turbok.store``,
``turbok.apiserver`` or ``turbok.controllers``. The CLI is ``turbok.cli.upgrade``;
docs/upgrade.md states the rules implemented and their sources.
"""

from turbok.upgrade.apis import ApiCatalog, ApiStatus, api_catalog
from turbok.upgrade.checker import CheckReport, Finding, FindingKind, Severity, check_objects, exit_code
from turbok.upgrade.emulation import ControlPlaneVersion, can_emulate, emulation_floor, rollback_window
from turbok.upgrade.errors import (
    ClusterError,
    DataError,
    ManifestError,
    PlanRefusedError,
    UnknownVersionError,
    UpgradeError,
    VersionError,
)
from turbok.upgrade.manifests import ManifestObject, read_manifests
from turbok.upgrade.plan import ClusterState, Plan, Rollback, Step, StepKind
from turbok.upgrade.planner import PlanRequest, Strategy, make_plan, start_state
from turbok.upgrade.skew import ClusterVersions, Component, Instance, SkewViolation, check_skew
from turbok.upgrade.versions import ReleaseCatalog, Version, catalog, parse_version

__all__ = [
    "ApiCatalog",
    "ApiStatus",
    "CheckReport",
    "ClusterError",
    "ClusterState",
    "ClusterVersions",
    "Component",
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
    "ReleaseCatalog",
    "Rollback",
    "Severity",
    "SkewViolation",
    "Step",
    "StepKind",
    "Strategy",
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
    "make_plan",
    "parse_version",
    "read_manifests",
    "rollback_window",
    "start_state",
]
