"""Test doubles shared by turbok's test suites.

``kube_api.KubeApiDouble`` is a Kubernetes API double served over HTTP on
127.0.0.1: it replays discovery documents and objects from a fixture (a dict
or a directory), supports the verbs clients use, records what was created and
deleted, and runs reactors that stand in for controllers. Every fixture and
reactor written with it is a double of a cluster, and should say so in its name.
"""

from .kube_api import KubeApiDouble, RecordedRequest
from .kube_store import Event, Reject, Resource, Store, load_fixture

__all__ = ["Event", "KubeApiDouble", "RecordedRequest", "Reject", "Resource", "Store", "load_fixture"]
