"""One automated check per AI Conformance requirement, a module per area.

``base`` holds the contract (``Check``, ``CheckContext``, ``Outcome``) and the
registry; ``workloads`` the helpers they share (accelerator discovery, probe
pods, metrics endpoints). The area modules register their checks on import:

    dra             dra_support
    accelerators    driver_runtime_management, gpu_sharing, virtualized_accelerator
    networking      ai_inference, advanced_inference_ingress
    inference       high_performance_networking, disaggregated_inference
    scheduling      gang_scheduling
    autoscaling     cluster_autoscaling, pod_autoscaling
    observability   accelerator_metrics, ai_service_metrics
    security        secure_accelerator_access
    operator        robust_controller
    sandboxing      workload_sandboxing (v1.37 draft)

Only the runner calls checks; tests drive them through it against the
Kubernetes API double.
"""

from turbok.conformance.checks import (  # noqa: F401  (imported for registration)
    accelerators,
    autoscaling,
    dra,
    inference,
    networking,
    observability,
    operator,
    sandboxing,
    scheduling,
    security,
)
from turbok.conformance.checks.base import REGISTRY, Check, CheckContext, CheckOptions, Outcome

__all__ = ["REGISTRY", "Check", "CheckContext", "CheckOptions", "Outcome"]
