"""What the node may ask of the cluster: the same ``Client`` protocol as the controllers'
(``turbok.api.client``; the node must not import ``turbok.controllers``)."""

from turbok.api.client import Client as NodeClient
from turbok.api.client import Obj, ObjectEvent, PatchType

__all__ = ["NodeClient", "Obj", "ObjectEvent", "PatchType"]
