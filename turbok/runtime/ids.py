"""Runtime ids: what names a pod sandbox, a container attempt, and their directories.

Every runtime id has exactly ``ID_LENGTH`` characters of ``[a-z0-9]``: runsc
matches ids by prefix, so ids must never be prefixes of each other, and the
alphabet keeps them safe as file names, cgroup names and runsc arguments.
``sandbox_id`` derives one from anything unique (an object's uid); ``validate_id``
checks one before any path is built from it.
"""

from __future__ import annotations

import hashlib
import re

from turbok.runtime.errors import InvalidSandboxSpec

__all__ = ["ID_LENGTH", "sandbox_id", "validate_id"]

#: Every runtime id has exactly this many characters (runsc matches ids by prefix).
ID_LENGTH = 24
_ID_RE = re.compile(rf"[a-z0-9]{{{ID_LENGTH}}}")


def sandbox_id(uid: str) -> str:
    """A fixed-width, prefix-free runtime id derived from an object's uid.

    runsc matches container ids by prefix, so ids must never be prefixes of
    each other: all ids have the same length.
    """
    return "tk" + hashlib.sha256(uid.encode()).hexdigest()[: ID_LENGTH - 2]


def validate_id(id: str) -> str:
    """Return ``id`` if it is a runtime id (24 characters of ``[a-z0-9]``), else raise.

    Fixed width keeps ids prefix-free; the alphabet keeps them safe as file
    names, cgroup names and runsc arguments.
    """
    if not _ID_RE.fullmatch(id):
        raise InvalidSandboxSpec(
            f"invalid sandbox id {id!r}: want {ID_LENGTH} characters of [a-z0-9] (see sandbox_id)"
        )
    return id
