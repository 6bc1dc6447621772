"""kube-apiserver's field-validation vocabulary: causes worded as ``k8s.io/apimachinery`` words them.

Shared by every validator of built-in kinds (pod specs, Services, PVCs,
Secrets...), so ``spec.ports[0].port: Invalid value: 0: must be between 1 and
65535, inclusive`` reads the same wherever it comes from. Pure functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from turbok.api.quantity import QuantityError, parse_quantity
from turbok.api.status import Cause

__all__ = [
    "DNS1035_LABEL_MESSAGE",
    "DNS1123_LABEL_MESSAGE",
    "DNS1123_SUBDOMAIN_MESSAGE",
    "config_map_key_causes",
    "dns1035_label_causes",
    "dns1123_label_causes",
    "dns1123_subdomain_causes",
    "duplicate",
    "forbidden",
    "invalid",
    "not_found",
    "not_supported",
    "port_name_problems",
    "port_number_causes",
    "quantity",
    "quote",
    "range_causes",
    "required",
    "too_long",
]

DNS1123_LABEL_MESSAGE = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
                         "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
                         "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
DNS1123_SUBDOMAIN_MESSAGE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
                             "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
                             "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*"
                             "[a-z0-9])?)*')")
DNS1035_LABEL_MESSAGE = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                         "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
                         "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_CONFIG_MAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def quote(value: Any) -> str:
    """A value as ``field.Invalid`` prints it: strings quoted, numbers and booleans bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if value is None:
        return "null"
    return str(value)


def invalid(field: str, value: Any, why: str) -> Cause:
    return Cause(field, f"Invalid value: {quote(value)}: {why}")


def required(field: str, detail: str = "") -> Cause:
    return Cause(field, "Required value" + (f": {detail}" if detail else ""), "FieldValueRequired")


def forbidden(field: str, detail: str) -> Cause:
    return Cause(field, f"Forbidden: {detail}", "FieldValueForbidden")


def duplicate(field: str, value: Any) -> Cause:
    return Cause(field, f"Duplicate value: {quote(value)}", "FieldValueDuplicate")


def not_found(field: str, value: Any) -> Cause:
    return Cause(field, f"Not found: {quote(value)}", "FieldValueNotFound")


def not_supported(field: str, value: Any, supported: Iterable[str]) -> Cause:
    listed = ", ".join(quote(s) for s in supported)
    return Cause(field, f"Unsupported value: {quote(value)}: supported values: {listed}", "FieldValueNotSupported")


def too_long(field: str, limit: int) -> Cause:
    return Cause(field, f"Too long: may not be more than {limit} bytes", "FieldValueTooLong")


def _name_causes(field: str, value: str, limit: int, pattern: re.Pattern[str], message: str) -> list[Cause]:
    causes = []
    if len(value) > limit:
        causes.append(invalid(field, value, f"must be no more than {limit} characters"))
    if not pattern.match(value):
        causes.append(invalid(field, value, message))
    return causes


def dns1123_label_causes(field: str, value: str) -> list[Cause]:
    return _name_causes(field, value, 63, _DNS1123_LABEL, DNS1123_LABEL_MESSAGE)


def dns1123_subdomain_causes(field: str, value: str) -> list[Cause]:
    return _name_causes(field, value, 253, _DNS1123_SUBDOMAIN, DNS1123_SUBDOMAIN_MESSAGE)


def dns1035_label_causes(field: str, value: str) -> list[Cause]:
    return _name_causes(field, value, 63, _DNS1035_LABEL, DNS1035_LABEL_MESSAGE)


def config_map_key_causes(field: str, key: str) -> list[Cause]:
    """``IsConfigMapKey``: the keys of Secrets' and ConfigMaps' data, and of key selectors."""
    causes = []
    if len(key) > 253:
        causes.append(invalid(field, key, "must be no more than 253 characters"))
    if not _CONFIG_MAP_KEY.match(key):
        causes.append(invalid(field, key, "a valid config key must consist of alphanumeric characters, '-', '_' or "
                                          "'.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for "
                                          "validation is '[-._a-zA-Z0-9]+')"))
    if key == ".":
        causes.append(invalid(field, key, "must not be '.'"))
    elif key == "..":
        causes.append(invalid(field, key, "must not be '..'"))
    elif key.startswith(".."):
        causes.append(invalid(field, key, "must not start with '..'"))
    return causes


def range_causes(field: str, value: Any, low: int, high: int) -> list[Cause]:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return []
    return [invalid(field, value, f"must be between {low} and {high}, inclusive")]


def port_number_causes(field: str, value: Any) -> list[Cause]:
    return range_causes(field, value, 1, 65535)


def port_name_problems(name: str) -> list[str]:
    """``IsValidPortName``: an IANA service name."""
    problems = []
    if len(name) > 15:
        problems.append("must be no more than 15 characters")
    if not re.fullmatch(r"[-a-z0-9]+", name):
        problems.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search(r"[a-z]", name):
        problems.append("must contain at least one letter (a-z)")
    if "--" in name:
        problems.append("must not contain consecutive hyphens")
    if name and (name[0] == "-" or name[-1] == "-"):
        problems.append("must not begin or end with a hyphen")
    return problems


def quantity(value: Any) -> Any:
    """A quantity's number, or None when it does not parse (the schema names a malformed one)."""
    try:
        return parse_quantity(value)
    except (QuantityError, TypeError):
        return None
