"""Errors of the client side of the Kubernetes API, one tree under ``TurbokError``.

Who raises what: ``kubeconfig`` raises the ``KubeconfigError`` family, while
loading a kubeconfig and, for credentials that are read or refreshed on each
request (``tokenFile``, exec plugins), from ``httpx`` requests of a client it
built; ``rest`` raises ``ConnectionFailed`` when no HTTP answer came back
(answers with a failure ``Status`` become ``turbok.api.status`` errors).
Callers in other parts catch ``KubeconfigError`` and may re-raise it as their
own kind (the upgrade planner's ``ClusterError``); the conformance CLI treats it
as a usage error (exit 2), every other command as an error (exit 1).

    TurbokError
    ├── KubeconfigError                  a kubeconfig turbok cannot use (message: which file, what to do)
    │   ├── KubeconfigNotFoundError      no such file; nothing in $KUBECONFIG exists; no default, not in a Pod
    │   ├── KubeconfigFormatError        unreadable, not YAML, not a mapping, bad base64, no http(s) server
    │   ├── ContextNotFoundError         no current-context, or a context or cluster the file does not define
    │   ├── CredentialError              unreadable tokenFile, legacy auth-provider, failing exec plugin
    │   └── TlsConfigError               a CA, client certificate or key that ``ssl`` refuses
    └── ConnectionFailed                 the API server could not be reached (``rest.RestClient``)
"""

from __future__ import annotations

from turbok.errors import TurbokError

__all__ = [
    "ConnectionFailed",
    "ContextNotFoundError",
    "CredentialError",
    "KubeconfigError",
    "KubeconfigFormatError",
    "KubeconfigNotFoundError",
    "TlsConfigError",
]


class KubeconfigError(TurbokError):
    """A kubeconfig that cannot be read, or lacks what is needed to reach the cluster."""


class KubeconfigNotFoundError(KubeconfigError):
    """No kubeconfig where one was asked for or looked for."""


class KubeconfigFormatError(KubeconfigError):
    """A kubeconfig (or a file it names) that cannot be read or does not make sense."""


class ContextNotFoundError(KubeconfigError):
    """No context to use, or a context that names a cluster the kubeconfig does not define."""


class CredentialError(KubeconfigError):
    """The user's credentials cannot be produced: token file, exec plugin, auth-provider."""


class TlsConfigError(KubeconfigError):
    """A certificate authority, client certificate or key that cannot be loaded."""


class ConnectionFailed(TurbokError):
    """The API server could not be reached."""
