"""One suite, two engines: the embedded engine's controller tests, run unchanged on a real cluster.

The test bodies are those of tests/unit/controllers (there they run over the embedded registry with a
fake node); here their ``cluster`` is ``KubeEngineCluster``: a real kube-apiserver, turbok's operator
(the same reconcilers, through ``KubeClient``), kube-scheduler binding Pods, kwok running them and
kube-controller-manager collecting garbage. Left out, each for the reason given in ``NOT_ON_KWOK``: the
bodies that make the fake node report what kwok cannot (a held, crashing or finished Pod, an image
never pulled, a node's suspend state), which the embedded engine's suite covers.
"""

from __future__ import annotations

from tests.unit.controllers.test_claim import (  # noqa: F401 (collected here, run on this module's cluster)
    test_a_claim_refused_by_the_template_policy_is_served_once_the_template_allows_it,
    test_a_foreign_sandbox_with_the_claims_name_is_a_reconciler_error,
    test_additional_pod_metadata_is_validated_as_upstream,
    test_additional_pod_metadata_lands_on_the_sandbox_and_its_pod,
    test_adoption_and_cold_start_are_recorded_as_events,
    test_claim_with_env_starts_cold_under_allowed_policy,
    test_deleting_a_claim_deletes_its_sandbox,
    test_empty_pool_means_a_cold_start_named_like_the_claim,
    test_env_is_rejected_when_the_template_disallows_it,
    test_missing_pool_is_reported_then_adopted_when_it_appears,
    test_missing_template_with_an_empty_pool_is_template_not_found,
    test_overriding_an_env_var_is_refused_under_allowed_but_not_under_overrides,
    test_sandbox_expiry_is_forwarded_as_sandbox_expired,
    test_sandboxes_from_a_template_get_upstreams_secure_defaults,
    test_shutdown_time_with_delete_policy_deletes_claim_and_sandbox,
    test_shutdown_time_with_retain_keeps_claim_and_deletes_sandbox,
    test_volume_claim_templates_disallowed_by_default,
    test_warm_adoption_moves_ownership_and_strips_pool_labels,
)
from tests.unit.controllers.test_sandbox import (  # noqa: F401
    test_a_pod_owned_by_another_controller_is_refused,
    test_a_stale_pod_name_annotation_is_cleared_and_a_pod_made,
    test_an_unowned_pod_in_the_way_is_adopted_only_when_it_may_be,
    test_template_label_changes_follow_on_the_running_pod,
    test_volume_claim_templates_become_owned_pvcs_mounted_in_the_pod,
)
from tests.unit.controllers.test_template import (  # noqa: F401
    test_a_template_without_a_policy_gets_upstreams_secure_default,
    test_a_templates_own_rules_replace_the_default_and_follow_its_changes,
    test_drift_is_put_back_and_an_unchanged_policy_is_not_rewritten,
    test_unmanaged_removes_the_templates_policy_and_leaves_others_alone,
)
from tests.unit.controllers.test_warmpool import (  # noqa: F401
    test_claimed_sandbox_leaves_the_pool_and_the_pool_refills,
    test_on_replenish_keeps_older_sandboxes,
    test_pool_keeps_replicas_ready_with_upstream_names_labels_and_owner,
    test_pool_without_template_creates_nothing_until_it_exists,
    test_recreate_replaces_sandboxes_of_an_older_template,
)

#: Bodies of the embedded suite not run here, and why.
NOT_ON_KWOK = {
    "node.hold / node.run / crash_loop / finish / wait_for_image": "kwok reports every Pod Running and Ready; "
    "it cannot hold one Pending, crash it, finish it or fail its image pull",
    "node.deleted / teardown_gate": "what the embedded node keeps of a deleted Pod (turbok.dev/on-delete) is "
    "the embedded node's job; a kubelet does not read that annotation",
    "test_service_true_makes_a_headless_service_like_upstream": "asserts serviceFQDN in namespace default; "
    "here each test has a namespace of its own (tests/kube/test_operator.py checks the Service on a cluster)",
}
