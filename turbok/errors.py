"""The root of every turbok error, and nothing else.

Each part keeps its own hierarchy under this root (``turbok.api.status`` for
API errors, ``turbok.runtime.errors``, ``turbok.checkpoint.errors``,
``turbok.conformance.errors``), so the CLI can turn any of them into one
clear line. This module imports nothing, so every layer may use it.
"""

__all__ = ["TurbokError"]


class TurbokError(Exception):
    """Something turbok could not do; the message says what and what to try."""
