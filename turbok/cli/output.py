"""How the CLI speaks: one console for results, one line on stderr for errors."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

__all__ = ["console", "err_console", "fail", "print_data", "say_error"]

console = Console()
err_console = Console(stderr=True)


def say_error(message: str) -> None:
    """Print one clear line on stderr (rich markup in ``message`` is not interpreted)."""
    err_console.print("[bold red]error:[/] ", end="", highlight=False)
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


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
