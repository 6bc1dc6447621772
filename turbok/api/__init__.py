"""The kinds turbok serves, as plain data: no I/O, no servers, no storage.

Owns: the kind registry loaded from the CRDs in ``crds/`` (``kinds``),
structural-schema validation, defaulting and pruning (``schema``), object
metadata rules, selectors and conditions (``meta``), the error tree that
becomes a Kubernetes ``Status`` (``status``), quantities (``quantity``), and
the rules kube-apiserver applies to pods, as they apply to Sandboxes: PodSpec
validation (``podtemplate``), LimitRange defaults and bounds (``limitrange``)
and ResourceQuota usage (``quota``).

Imports nothing of turbok but ``turbok.errors``: every other part may use it,
on either engine.
"""
