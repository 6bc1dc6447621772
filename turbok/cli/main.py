"""Entry point of the ``turbok`` command: wires the sub-apps and maps errors.

Every ``TurbokError`` that escapes a command becomes one line on stderr and
exit code 1; a traceback is a bug.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import typer

from turbok import __version__
from turbok.cli.output import say_error
from turbok.errors import TurbokError

__all__ = ["app", "main"]

app = typer.Typer(
    name="turbok",
    help="A home for AI workloads: agent sandboxes, multi-tier checkpoints, AI conformance.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (module, sub-app name or None for top-level commands, help)
_PARTS: list[tuple[str, str | None, str]] = [
    ("turbok.cli.control", None, ""),
    ("turbok.cli.objects", None, ""),
    ("turbok.cli.sandbox", "sandbox", "Run commands in sandboxes and copy files."),
    ("turbok.cli.checkpoint", "checkpoint", "Multi-tier checkpoints: agent, ls, verify, restore."),
    ("turbok.cli.conformance", "conformance", "Certified Kubernetes AI Conformance checker."),
    ("turbok.cli.upgrade", "upgrade", "Plan safe control-plane upgrades and find removed APIs."),
]


def _register() -> None:
    for module_name, name, help_text in _PARTS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue  # part not built yet
            raise
        if name is None:
            module.register(app)
        else:
            app.add_typer(module.app, name=name, help=help_text)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at debug level."),
) -> None:
    level = logging.DEBUG if verbose else getattr(logging, os.environ.get("TURBOK_LOG", "WARNING").upper(), logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command("version")
def version() -> None:
    """Print the turbok version."""
    typer.echo(__version__)


_register()


def main() -> None:
    try:
        app()
    except TurbokError as e:
        say_error(str(e))
        sys.exit(1)
    except KeyboardInterrupt:
        say_error("interrupted")
        sys.exit(130)
