"""The JSONPath subset that CRD printer columns use.

Supports ``.a.b``, ``['a.b']``, ``[0]``, ``[*]`` and filters
``[?(@.type=='Ready')]``; returns every match, as kubectl's JSONPath does.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["find"]

_TOKEN = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_\-]+)"""
    r"""|\[(?P<index>-?\d+|\*)\]"""
    r"""|\['(?P<quoted>[^']*)'\]"""
    r"""|\[\?\(@\.(?P<fpath>[A-Za-z0-9_.\-]+)\s*==\s*(?:'(?P<fval>[^']*)'|"(?P<fval2>[^"]*)")\)\]"""
)


def _tokens(path: str) -> list[re.Match[str]]:
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    out, pos = [], 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if not m:
            raise ValueError(f"unsupported JSONPath {path!r} at {pos}")
        out.append(m)
        pos = m.end()
    return out


def _dotted(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def find(obj: Any, path: str) -> list[Any]:
    current = [obj]
    for tok in _tokens(path):
        nxt: list[Any] = []
        for value in current:
            if tok.group("field") is not None or tok.group("quoted") is not None:
                key = tok.group("field") if tok.group("field") is not None else tok.group("quoted")
                if isinstance(value, dict) and key in value:
                    nxt.append(value[key])
            elif tok.group("index") is not None:
                if not isinstance(value, list):
                    continue
                if tok.group("index") == "*":
                    nxt.extend(value)
                else:
                    i = int(tok.group("index"))
                    if -len(value) <= i < len(value):
                        nxt.append(value[i])
            else:
                want = tok.group("fval") if tok.group("fval") is not None else tok.group("fval2")
                if isinstance(value, list):
                    nxt.extend(v for v in value if str(_dotted(v, tok.group("fpath"))) == want)
        current = nxt
    return current
