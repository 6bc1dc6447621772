"""AI conformance: check a cluster against the Certified Kubernetes AI Conformance requirements.

A client of whichever cluster it checks: it talks HTTP to the Kubernetes API
(``kube``, over ``turbok.client.kubeconfig``, which finds the cluster and
credentials as kubectl does; ``ClusterConfig`` and ``load_kubeconfig`` are
re-exported from there) and never imports turbok's store, API server or
controllers. Modules, by noun:

    catalog       the official checklists (packaged YAML) and draft requirements
    kube          a small REST client: discovery, CRUD, logs, service proxy
    checks/       one automated check per requirement, a module per area
    runner        runs the checks of one checklist, always cleans up
    cleanup       labels, the tracker of created objects, the --cleanup sweep
    results       what a run found (plain data)
    reports       results.json, junit.xml, e2e.log, evidence/, PRODUCT.yaml draft
    validator     the CNCF submission rules for PRODUCT.yaml
    errors        the error tree

Callers: ``turbok conformance`` (``turbok.cli.conformance``) and the tests.
"""

from turbok.client.kubeconfig import ClusterConfig, load_kubeconfig
from turbok.conformance.catalog import (
    Checklist,
    Requirement,
    checklist,
    checklist_for_cluster,
    draft_versions,
    frozen_versions,
)
from turbok.conformance.checks import CheckOptions
from turbok.conformance.errors import ConformanceError
from turbok.conformance.kube import KubeClient
from turbok.conformance.reports import write_reports
from turbok.conformance.results import CheckResult, RunReport, Status
from turbok.conformance.runner import Runner, RunSettings
from turbok.conformance.validator import ValidationResult, validate_file, validate_text

__all__ = [
    "CheckOptions",
    "CheckResult",
    "Checklist",
    "ClusterConfig",
    "ConformanceError",
    "KubeClient",
    "Requirement",
    "RunReport",
    "RunSettings",
    "Runner",
    "Status",
    "ValidationResult",
    "checklist",
    "checklist_for_cluster",
    "draft_versions",
    "frozen_versions",
    "load_kubeconfig",
    "validate_file",
    "validate_text",
    "write_reports",
]
