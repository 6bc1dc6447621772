"""Client side of the Kubernetes API, shared by every turbok client.

Owns: reading kubeconfigs (``kubeconfig``: server, credentials, CA, the turbok
router extension) and a small typed REST client over httpx (``rest``) that
maps ``Status`` answers back to ``turbok.api.status`` errors. Used by the CLI,
the SDK, the conformance checker and the checkpoint agent; never imports
server-side modules.
"""
