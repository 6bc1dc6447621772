"""Confinement of request paths to the agent's root directory, as upstream's ``pathutil.SanitizePath``.

A path (relative to the root, or absolute under it) is cleaned lexically, joined
to the root, and resolved through its symlinks (for a path that does not exist
yet, through its nearest existing ancestor); the result must be the root or
below it, else ``Escapes`` (403). Inside a sandbox this is an API rule, not the
security boundary (gVisor is): a path that escapes only reaches the sandbox's
own files.
"""

from __future__ import annotations

import os
import posixpath

__all__ = ["Escapes", "confine"]


class Escapes(Exception):
    """The path resolves outside the root."""


def confine(root: str, user_path: str) -> str:
    """The real path ``user_path`` names under ``root``; ``Escapes`` if it leads outside.

    As upstream: an absolute path under the root is taken relative to it, any other absolute path is
    joined to the root too (``/etc/x`` is ``<root>/etc/x``), and ``..`` may not climb above the root."""
    if "\0" in user_path:
        raise Escapes(f"path {user_path!r} contains a NUL byte")
    real_root = os.path.realpath(root)
    clean = posixpath.normpath(user_path or ".")
    for prefix in (real_root, posixpath.normpath(root)):
        if clean == prefix:
            clean = "."
            break
        if clean.startswith(prefix.rstrip("/") + "/"):
            clean = clean[len(prefix.rstrip("/")) + 1:]
            break
    joined = posixpath.normpath(real_root + "/" + clean)
    resolved = _resolve(joined)
    if not _under(resolved, real_root):
        raise Escapes(f"path {user_path!r} leads outside the sandbox root")
    return resolved


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _resolve(path: str) -> str:
    """``realpath`` of ``path``; for a missing path, its nearest existing ancestor's plus the rest."""
    suffix: list[str] = []
    current = path
    while True:
        if os.path.lexists(current):
            real = os.path.realpath(current)
            return posixpath.join(real, *reversed(suffix)) if suffix else real
        parent, name = posixpath.split(current)
        if parent == current:
            return path
        suffix.append(name)
        current = parent
