"""How the CLI speaks: one console for results, one line on stderr for errors.

Text that a server or a sandbox chose (file names, messages, table cells) is
shown literally: ``say`` and ``say_error`` interpret no rich markup or emoji
codes (a file named ``[blink]X`` prints as ``[blink]X``) and escape control
characters (``turbok.printable``), so nothing a sandbox names can drive the
terminal. ``cell`` does the same for a table cell.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from turbok.printable import printable

__all__ = ["cell", "console", "err_console", "fail", "print_data", "say", "say_error"]

console = Console()
err_console = Console(stderr=True)


def say(text: str, *, style: str | None = None) -> None:
    """Print ``text`` on stdout as it is: no markup, no emoji codes, control characters escaped."""
    console.print(printable(text), style=style, markup=False, emoji=False, highlight=False, soft_wrap=True)


def cell(text: str) -> Text:
    """A table cell that shows ``text`` literally (rich would interpret markup in a plain string)."""
    return Text(printable(text))


def say_error(message: str) -> None:
    """Print one clear line on stderr (``message`` is shown literally, as ``say`` does)."""
    err_console.print("[bold red]error:[/] ", end="", highlight=False)
    err_console.print(printable(message), markup=False, emoji=False, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Inside a command: print one clear line on stderr and exit non-zero."""
    say_error(message)
    raise typer.Exit(code)


def print_data(data: Any, fmt: str) -> None:
    """Write machine-readable output (json or yaml) to stdout, unstyled."""
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    elif fmt == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        fail(f"unknown output format {fmt!r}: use json or yaml")
