"""Untrusted text made safe to show: on a terminal, or as one line of a log.

Sandboxed code chooses file names, and clients choose paths, headers and object
fields; printed raw, an ESC sequence in them drives the reader's terminal and a
newline forges a log line. ``printable`` escapes every control character (C0,
DEL, C1), the invisible bidirectional and line-separator characters that
reorder or split what a reader sees, and lone surrogates (a name that is not
UTF-8), as ``\\n``, ``\\r``, ``\\t``, ``\\xNN`` or ``\\uNNNN``. Everything else,
backslashes included, is kept as it is, so ordinary text reads unchanged.

Who calls it: the CLI (``turbok.cli.output``) for names and messages that come
from a server, the API server's and the router's request logs, and
``OneLineFormatter``, which ``turbok`` installs on its log handler so every
record's message is one line whatever it quotes (a traceback still follows it).
"""

from __future__ import annotations

import logging
import re

__all__ = ["OneLineFormatter", "printable"]

_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f"  # C0, DEL, C1 (ESC and CSI among them)
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidirectional marks, embeddings, overrides, isolates
    "\u2028\u2029"  # line and paragraph separators
    "\ud800-\udfff]"  # lone surrogates: undecodable bytes of a name
)
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with control, bidirectional and separator characters escaped (``\\x1b``, ``\\n``, ``\\u202e``...)."""
    return _UNSAFE.sub(_escape, text)


class OneLineFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose message part is always one printable line."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = printable(record.message)
        return super().formatMessage(record)
