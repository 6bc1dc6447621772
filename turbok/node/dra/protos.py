"""The kubelet's plugin gRPC APIs, as protobuf messages built at import (no generated code, no protoc).

Two services, with the wire names and field numbers of the kubelet's ``api.proto`` files, so an
unmodified upstream DRA driver talks to turbok's node as to a kubelet:

- ``pluginregistration.Registration`` (k8s.io/kubelet/pkg/apis/pluginregistration/v1): ``GetInfo``,
  ``NotifyRegistrationStatus``; served by a plugin on its registration socket, called by the kubelet.
- ``k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin`` (k8s.io/kubelet/pkg/apis/dra/v1; ``v1beta1`` has the same
  messages): ``NodePrepareResources``, ``NodeUnprepareResources``; served by the driver, called by the
  kubelet.

``messages`` holds the classes; ``method_path`` gives a method's gRPC path.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["DRA_SERVICE", "DRA_V1BETA1_SERVICE", "REGISTRATION_SERVICE", "M", "method_path"]

DRA_PACKAGE = "k8s.io.kubelet.pkg.apis.dra.v1"
DRA_SERVICE = f"{DRA_PACKAGE}.DRAPlugin"
DRA_V1BETA1_SERVICE = "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin"
REGISTRATION_SERVICE = "pluginregistration.Registration"

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _BOOL, _MSG = _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_MESSAGE
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED


def _message(fdp: descriptor_pb2.FileDescriptorProto, name: str,
             fields: list[tuple[str, int, int, int, str]]) -> descriptor_pb2.DescriptorProto:
    msg = fdp.message_type.add(name=name)
    for fname, number, ftype, label, type_name in fields:
        f = msg.field.add(name=fname, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = type_name
    return msg


def _map_entry(msg: descriptor_pb2.DescriptorProto, value_type: str) -> None:
    entry = msg.nested_type.add(name="ClaimsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_STRING, label=_OPTIONAL)
    entry.field.add(name="value", number=2, type=_MSG, label=_OPTIONAL, type_name=value_type)
    msg.field.add(name="claims", number=1, type=_MSG, label=_REPEATED, type_name=f"{msg.name}.ClaimsEntry")


def _dra(package: str) -> descriptor_pb2.FileDescriptorProto:
    p = f".{package}"
    fdp = descriptor_pb2.FileDescriptorProto(name=f"{package.replace('.', '/')}/api.proto", package=package,
                                             syntax="proto3")
    _message(fdp, "Claim", [("namespace", 1, _STRING, _OPTIONAL, ""), ("uid", 2, _STRING, _OPTIONAL, ""),
                            ("name", 3, _STRING, _OPTIONAL, "")])
    _message(fdp, "NodePrepareResourcesRequest", [("claims", 1, _MSG, _REPEATED, f"{p}.Claim")])
    _message(fdp, "Device", [("request_names", 1, _STRING, _REPEATED, ""), ("pool_name", 2, _STRING, _OPTIONAL, ""),
                             ("device_name", 3, _STRING, _OPTIONAL, ""),
                             ("cdi_device_ids", 4, _STRING, _REPEATED, "")])
    _message(fdp, "NodePrepareResourceResponse", [("devices", 1, _MSG, _REPEATED, f"{p}.Device"),
                                                  ("error", 2, _STRING, _OPTIONAL, "")])
    resp = fdp.message_type.add(name="NodePrepareResourcesResponse")
    _map_entry(resp, f"{p}.NodePrepareResourceResponse")
    _message(fdp, "NodeUnprepareResourcesRequest", [("claims", 1, _MSG, _REPEATED, f"{p}.Claim")])
    _message(fdp, "NodeUnprepareResourceResponse", [("error", 1, _STRING, _OPTIONAL, "")])
    resp = fdp.message_type.add(name="NodeUnprepareResourcesResponse")
    _map_entry(resp, f"{p}.NodeUnprepareResourceResponse")
    return fdp


def _registration() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="pluginregistration/api.proto", package="pluginregistration",
                                             syntax="proto3")
    _message(fdp, "PluginInfo", [("type", 1, _STRING, _OPTIONAL, ""), ("name", 2, _STRING, _OPTIONAL, ""),
                                 ("endpoint", 3, _STRING, _OPTIONAL, ""),
                                 ("supported_versions", 4, _STRING, _REPEATED, "")])
    _message(fdp, "RegistrationStatus", [("plugin_registered", 1, _BOOL, _OPTIONAL, ""),
                                         ("error", 2, _STRING, _OPTIONAL, "")])
    _message(fdp, "RegistrationStatusResponse", [])
    _message(fdp, "InfoRequest", [])
    return fdp


class _Messages:
    def __init__(self) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        for fdp in (_dra(DRA_PACKAGE), _registration()):
            self.pool.Add(fdp)

    def __call__(self, full_name: str) -> Any:
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))


_M = _Messages()


class M:
    """The message classes."""

    Claim = _M(f"{DRA_PACKAGE}.Claim")
    NodePrepareResourcesRequest = _M(f"{DRA_PACKAGE}.NodePrepareResourcesRequest")
    NodePrepareResourcesResponse = _M(f"{DRA_PACKAGE}.NodePrepareResourcesResponse")
    NodePrepareResourceResponse = _M(f"{DRA_PACKAGE}.NodePrepareResourceResponse")
    Device = _M(f"{DRA_PACKAGE}.Device")
    NodeUnprepareResourcesRequest = _M(f"{DRA_PACKAGE}.NodeUnprepareResourcesRequest")
    NodeUnprepareResourcesResponse = _M(f"{DRA_PACKAGE}.NodeUnprepareResourcesResponse")
    NodeUnprepareResourceResponse = _M(f"{DRA_PACKAGE}.NodeUnprepareResourceResponse")
    PluginInfo = _M("pluginregistration.PluginInfo")
    RegistrationStatus = _M("pluginregistration.RegistrationStatus")
    RegistrationStatusResponse = _M("pluginregistration.RegistrationStatusResponse")
    InfoRequest = _M("pluginregistration.InfoRequest")


def method_path(service: str, method: str) -> str:
    return f"/{service}/{method}"
