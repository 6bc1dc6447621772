"""What reconcilers may ask of the cluster: the ``Client`` protocol of ``turbok.api.client``, under the name
the controllers have always imported it by."""

from turbok.api.client import Client, Obj, ObjectEvent, PatchType

__all__ = ["Client", "Obj", "ObjectEvent", "PatchType"]
