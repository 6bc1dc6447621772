"""CEL as Kubernetes evaluates it: DRA device selectors and CRD validation rules.

One maintained library, cel-expr-python (Google's CEL C++ runtime behind a
Python module), compiles and evaluates every expression turbok meets:

- **device selectors** (``resource.k8s.io/v1`` DeviceClass and ResourceClaim
  ``selectors[].cel.expression``): ``device.driver`` (string),
  ``device.attributes`` (domain -> attribute -> bool, int, string or
  semver), ``device.capacity`` (domain -> capacity -> quantity) and
  ``device.allowMultipleAllocations`` (bool), type-checked at compile time
  as kube-apiserver checks them, so ``device.driver == 1`` is refused with
  the checker's own words; the expression must be boolean. A domain the
  device has no attribute in reads as an empty map, as in Kubernetes, so
  ``"model" in device.attributes["x.example.com"]`` is false and
  ``device.attributes["x.example.com"].model`` is a runtime error
  ("no such key"), which the allocator reports.
- **CRD rules** (``x-kubernetes-validations``): ``self`` and ``oldSelf``
  as dynamic values (``turbok.api.schema``).

Kubernetes' CEL libraries available here: the standard library, the strings
extension, ``quantity()``/``isQuantity()`` with ``isGreaterThan``,
``isLessThan``, ``compareTo``, ``sign``, ``add``, ``sub``, ``asInteger``,
``asApproximateFloat``, ``isInteger``; ``semver()``/``isSemver()`` with
``major``, ``minor``, ``patch``, ``isGreaterThan``, ``isLessThan``,
``compareTo``. Not here (docs/dra.md): the lists, regex ``find``, URL, IP and
CIDR libraries, and the static cost estimate (only the 10 KiB length bound
is checked).

Compiled programs are cached by text (compiling is ~100x an evaluation).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext import ext_strings
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from turbok.api.quantity import QuantityError, parse_quantity

__all__ = [
    "MAX_EXPRESSION_LENGTH",
    "CelCompileError",
    "CelEvalError",
    "Program",
    "Semver",
    "compile_rule",
    "compile_selector",
    "device_activation",
    "literal_domains",
    "parse_semver",
    "quantity_value",
]

#: resource.k8s.io's bound on one selector expression (CELSelectorExpressionMaxLength).
MAX_EXPRESSION_LENGTH = 10 * 1024


class CelCompileError(ValueError):
    """An expression that does not compile; ``str()`` is the checker's message (``not_bool``: it compiles but
    is not boolean, which kube does not call a compilation failure)."""

    def __init__(self, message: str, *, not_bool: bool = False) -> None:
        super().__init__(message)
        self.not_bool = not_bool


class CelEvalError(RuntimeError):
    """An expression that failed while evaluated (a missing key, a bad conversion...)."""


# ---------------------------------------------------------------- kubernetes.Quantity and kubernetes.Semver

def _pool() -> tuple[descriptor_pool.DescriptorPool, Any, Any]:
    """Quantity and Semver as protobuf messages: cel-expr-python's opaque values with member functions, and
    with the type names Kubernetes gives them (so errors name ``kubernetes.Quantity`` as kube's do)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="turbok/cel/kubernetes.proto", package="kubernetes",
                                             syntax="proto3")
    string, int64 = descriptor_pb2.FieldDescriptorProto.TYPE_STRING, descriptor_pb2.FieldDescriptorProto.TYPE_INT64
    q = fdp.message_type.add(name="Quantity")
    q.field.add(name="value", number=1, type=string, label=1)  # the exact decimal, normalized: equal iff equal
    s = fdp.message_type.add(name="Semver")
    for i, name in enumerate(("major", "minor", "patch"), start=1):
        s.field.add(name=name, number=i, type=int64, label=1)
    s.field.add(name="pre", number=4, type=string, label=1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (pool, message_factory.GetMessageClass(pool.FindMessageTypeByName("kubernetes.Quantity")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("kubernetes.Semver")))


_POOL, Quantity, Semver = _pool()
_Q = cel.Type("kubernetes.Quantity")
_S = cel.Type("kubernetes.Semver")
T = cel.Type


def _dec(q: Any) -> Decimal:
    return Decimal(q.value)


def quantity_value(value: Decimal | str | int) -> Any:
    """A ``kubernetes.Quantity`` value for CEL."""
    d = value if isinstance(value, Decimal) else parse_quantity(value)
    return Quantity(value=str(d.normalize()) if d else "0")


def _quantity(text: str) -> Any:
    try:
        return quantity_value(text)
    except (QuantityError, ArithmeticError) as e:
        raise ValueError(f"quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?"
                         f"[0-9]*)$': {text!r}") from e


def _is_quantity(text: str) -> bool:
    try:
        parse_quantity(text)
        return True
    except (QuantityError, ArithmeticError):
        return False


def _cmp(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                     r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
                     r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")


def parse_semver(text: str) -> Any:
    """A ``kubernetes.Semver`` (semver.org 2.0.0; build metadata is ignored in comparisons); ValueError if not one."""
    m = _SEMVER.match(text)
    if not m:
        raise ValueError(f"invalid semver: {text}")
    return Semver(major=int(m[1]), minor=int(m[2]), patch=int(m[3]), pre=m[4] or "")


def _is_semver(text: str) -> bool:
    return _SEMVER.match(text) is not None


def _semver_key(v: Any) -> tuple[Any, ...]:
    pre: tuple[Any, ...] = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in v.pre.split(".")) \
        if v.pre else ()
    # A version with a pre-release sorts before the same version without one.
    return (v.major, v.minor, v.patch, 0 if pre else 1, pre)


def _compare(a: Any, b: Any) -> int:
    if isinstance(a, Semver) and isinstance(b, Semver):
        return _cmp(_semver_key(a), _semver_key(b))
    if isinstance(a, Quantity) and isinstance(b, Quantity):
        return _cmp(_dec(a), _dec(b))
    raise TypeError(f"cannot compare {type(a).__name__} with {type(b).__name__}")


def _fn(name: str, *overloads: cel.Overload) -> cel.FunctionDecl:
    return cel.FunctionDecl(name, list(overloads))


def _member(oid: str, ret: cel.Type, params: list[cel.Type], impl: Any) -> cel.Overload:
    return cel.Overload(oid, ret, params, is_member=True, impl=impl)


def _global(oid: str, ret: cel.Type, params: list[cel.Type], impl: Any) -> cel.Overload:
    return cel.Overload(oid, ret, params, impl=impl)


_FUNCTIONS = [
    _fn("quantity", _global("string_to_quantity", _Q, [T.STRING], _quantity)),
    _fn("isQuantity", _global("is_quantity_string", T.BOOL, [T.STRING], _is_quantity)),
    _fn("sign", _member("quantity_sign", T.INT, [_Q], lambda a: _cmp(_dec(a), 0))),
    _fn("isInteger", _member("quantity_is_integer", T.BOOL, [_Q],
                             lambda a: _dec(a) == _dec(a).to_integral_value() and abs(_dec(a)) < 2**63)),
    _fn("asInteger", _member("quantity_as_integer", T.INT, [_Q], lambda a: int(_dec(a)))),
    _fn("asApproximateFloat", _member("quantity_as_float", T.DOUBLE, [_Q], lambda a: float(_dec(a)))),
    _fn("add", _member("quantity_add", _Q, [_Q, _Q], lambda a, b: quantity_value(_dec(a) + _dec(b))),
        _member("quantity_add_int", _Q, [_Q, T.INT], lambda a, b: quantity_value(_dec(a) + b))),
    _fn("sub", _member("quantity_sub", _Q, [_Q, _Q], lambda a, b: quantity_value(_dec(a) - _dec(b))),
        _member("quantity_sub_int", _Q, [_Q, T.INT], lambda a, b: quantity_value(_dec(a) - b))),
    _fn("semver", _global("string_to_semver", _S, [T.STRING], parse_semver)),
    _fn("isSemver", _global("is_semver_string", T.BOOL, [T.STRING], _is_semver)),
    _fn("major", _member("semver_major", T.INT, [_S], lambda v: v.major)),
    _fn("minor", _member("semver_minor", T.INT, [_S], lambda v: v.minor)),
    _fn("patch", _member("semver_patch", T.INT, [_S], lambda v: v.patch)),
    # Quantity and Semver are both protobuf messages to the runtime, which keys implementations by argument
    # kinds: each comparison has one implementation for both types, and the checker sees both signatures.
    _fn("isGreaterThan",
        _member("quantity_is_greater_than", T.BOOL, [_Q, _Q], lambda a, b: _compare(a, b) > 0),
        cel.Overload("semver_is_greater_than", T.BOOL, [_S, _S], is_member=True)),
    _fn("isLessThan",
        _member("quantity_is_less_than", T.BOOL, [_Q, _Q], lambda a, b: _compare(a, b) < 0),
        cel.Overload("semver_is_less_than", T.BOOL, [_S, _S], is_member=True)),
    _fn("compareTo",
        _member("quantity_compare_to", T.INT, [_Q, _Q], lambda a, b: _compare(a, b)),
        cel.Overload("semver_compare_to", T.INT, [_S, _S], is_member=True)),
]


# ---------------------------------------------------------------- programs

class Program:
    """A compiled expression; ``evaluate`` returns its Python value or raises ``CelEvalError``."""

    def __init__(self, text: str, expression: Any) -> None:
        self.text = text
        self._expression = expression

    def evaluate(self, data: Mapping[str, Any]) -> Any:
        try:
            result = self._expression.eval(data=data)
        except Exception as e:  # the runtime raises plain exceptions for bad bindings
            raise CelEvalError(str(e)) from e
        if result.type() == T.ERROR:
            raise CelEvalError(_runtime_message(str(result.value())))
        return result.value()


def _runtime_message(text: str) -> str:
    """cel-cpp's runtime errors in cel-go's words, as Kubernetes reports them."""
    found = re.match(r'^NOT_FOUND: Key not found in map : "?(.*?)"?$', text)
    if found:
        return f"no such key: {found[1]}"
    return re.sub(r"^[A-Z_]+: ", "", text)


@functools.cache
def _selector_env() -> Any:
    return cel.NewEnv(_POOL, variables={
        "device.driver": T.STRING,
        "device.attributes": T.Map(T.STRING, T.Map(T.STRING, T.DYN)),
        "device.capacity": T.Map(T.STRING, T.Map(T.STRING, _Q)),
        "device.allowMultipleAllocations": T.BOOL,
    }, extensions=[ext_strings.ExtStrings()], functions=_FUNCTIONS)


@functools.cache
def _rule_env() -> Any:
    return cel.NewEnv(_POOL, variables={"self": T.DYN, "oldSelf": T.DYN},
                      extensions=[ext_strings.ExtStrings()], functions=_FUNCTIONS)


def _compile(env: Any, text: str) -> Any:
    try:
        return env.compile(text)
    except RuntimeError as e:
        # "INVALID_ARGUMENT: ERROR: <input>:1:15: found no matching overload ..." -> kube's "ERROR: ..." lines
        message = str(e).removeprefix("INVALID_ARGUMENT: ")
        message = re.sub(r" \[INVALID_ARGUMENT\]$", "", message.rstrip())
        raise CelCompileError(_as_cel_go(text, message)) from None


_UNDECLARED = re.compile(r"^ERROR: <input>:(\d+):(\d+): undeclared reference to '([^']+)' \(in container ''\)")


def _as_cel_go(text: str, message: str) -> str:
    """cel-cpp's words where cel-go's differ. ``device`` is declared here as qualified names (``device.driver``...),
    so an unknown ``device.x`` reads "undefined field 'x'" and an unknown ``foo.bar`` "undeclared reference to
    'foo'" at ``foo``, as they do where ``device`` is an object; an empty expression fails at column 0."""
    if not text:
        return message.replace("<input>:1:1:", "<input>:1:0:", 1).split("\n")[0]
    found = _UNDECLARED.match(message)
    if found is None or "." not in found[3]:
        return message
    line, column, name = int(found[1]), int(found[2]), found[3]
    source = text.splitlines()[line - 1] if text.splitlines() else text
    head, _, tail = name.rpartition(".")
    if head.split(".")[0] == "device":
        start = column - 1
        first = f"ERROR: <input>:{line}:{column}: undefined field '{tail}'"
    else:
        start = max(column - 1 - len(head), 0)
        first = f"ERROR: <input>:{line}:{start + 1}: undeclared reference to '{name.split('.')[0]}' (in container '')"
    return f"{first}\n | {source}\n | {'.' * start}^"


@functools.lru_cache(maxsize=4096)
def compile_selector(text: str) -> Program:
    """A device selector; ``CelCompileError`` when it does not compile or is not boolean."""
    expression = _compile(_selector_env(), text)
    kind = expression.return_type()
    if kind != T.BOOL and kind != T.DYN:
        raise CelCompileError(f"must evaluate to bool or the unknown type, not {kind.name().lower()}", not_bool=True)
    return Program(text, expression)


@functools.lru_cache(maxsize=1024)
def compile_rule(text: str) -> Program:
    """A CRD ``x-kubernetes-validations`` rule over ``self`` (and ``oldSelf``)."""
    return Program(text, _compile(_rule_env(), text))


# ---------------------------------------------------------------- a device, as a selector sees it

_DOMAIN_LITERAL = re.compile(r"""["']([a-z0-9]([-a-z0-9.]*[a-z0-9])?)["']""")


def _attribute(value: Mapping[str, Any]) -> Any:
    if "bool" in value:
        return bool(value["bool"])
    if "int" in value:
        return int(value["int"])
    if "string" in value:
        return str(value["string"])
    if "version" in value:
        try:
            return parse_semver(str(value["version"]))
        except ValueError:
            return str(value["version"])
    for key in ("bools", "ints", "strings"):
        if key in value:
            return list(value[key])
    if "versions" in value:
        return [parse_semver(str(v)) for v in value["versions"]]
    return None


def device_activation(driver: str, device: Mapping[str, Any], *, domains: tuple[str, ...] = ()) -> dict[str, Any]:
    """The variables of a selector for one ResourceSlice device. Unqualified attribute and capacity names belong
    to the driver's domain; every domain in ``domains`` (the string literals of the expressions to evaluate)
    reads as an empty map when the device has nothing there, as in Kubernetes."""
    attributes: dict[str, dict[str, Any]] = {d: {} for d in domains}
    attributes.setdefault(driver, {})
    for name, value in (device.get("attributes") or {}).items():
        domain, _, ident = name.rpartition("/")
        converted = _attribute(value or {})
        if converted is not None:
            attributes.setdefault(domain or driver, {})[ident] = converted
    capacity: dict[str, dict[str, Any]] = {d: {} for d in domains}
    capacity.setdefault(driver, {})
    for name, value in (device.get("capacity") or {}).items():
        domain, _, ident = name.rpartition("/")
        try:
            capacity.setdefault(domain or driver, {})[ident] = quantity_value(str((value or {}).get("value", "0")))
        except (QuantityError, ArithmeticError):
            continue
    return {"device.driver": driver, "device.attributes": attributes, "device.capacity": capacity,
            "device.allowMultipleAllocations": bool(device.get("allowMultipleAllocations"))}


def literal_domains(texts: tuple[str, ...]) -> tuple[str, ...]:
    """The string literals of ``texts`` that could name a domain (what ``device_activation`` pre-fills)."""
    found: set[str] = set()
    for text in texts:
        found.update(m.group(1) for m in _DOMAIN_LITERAL.finditer(text) if "." in m.group(1))
    return tuple(sorted(found))
