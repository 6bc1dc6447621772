"""Client side of the Kubernetes API, shared by every turbok client.

Owns: reading kubeconfigs as kubectl does (``kubeconfig``: merged files,
contexts, credentials, CA, the turbok router extension, a ready httpx client),
producing credentials (``credentials``: exec plugins, the httpx auth, client
certificates), the client errors (``errors``: the ``KubeconfigError`` tree) and
a small typed REST client over httpx (``rest``) that maps ``Status`` answers
back to ``turbok.api.status`` errors. Used by the CLI, the SDK-adjacent tools,
the conformance checker, the upgrade planner and the checkpoint agent; never
imports server-side modules (an import-linter contract says so).
"""
