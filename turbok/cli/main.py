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
from turbok.printable import OneLineFormatter

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
    ("turbok.cli.kube", None, ""),
    ("turbok.cli.sandbox", "sandbox", "Run commands in sandboxes and copy files."),
    ("turbok.cli.image", "image", "Images: pull, list, remove and prune OCI images; the built-in images."),
    ("turbok.cli.store", "store", "Check and repair this home's store (store.db) without losing good objects."),
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
    # One record, one line: messages quote paths, names and fields that clients and sandboxes choose.
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


@app.command("version")
def version() -> None:
    """Print the turbok version."""
    typer.echo(__version__)


_register()


def _click_exceptions() -> tuple[type[Exception], type[Exception]]:
    """(UsageError, NoArgsIsHelpError) of the click that typer runs on (newer typer vendors its own)."""
    try:
        from typer._click.exceptions import NoArgsIsHelpError, UsageError
    except ImportError:
        from click.exceptions import NoArgsIsHelpError, UsageError  # type: ignore[assignment]
    return UsageError, NoArgsIsHelpError


def main() -> None:
    """Run the CLI: every failure ends as one line on stderr and a non-zero exit code.

    Exit codes: 0 success, 1 an error (the line says what), 2 a usage error, 130 interrupted;
    commands document their own codes beyond these (`turbok upgrade`, `turbok conformance`).
    """
    usage_error, no_args = _click_exceptions()
    try:
        code = app(standalone_mode=False)
    except no_args:
        sys.exit(0)  # help was printed
    except usage_error as e:
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        say_error(f"{getattr(e, 'format_message', e.__str__)()}{where}")
        sys.exit(2)
    except TurbokError as e:
        say_error(str(e))
        sys.exit(1)
    except KeyboardInterrupt:
        say_error("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
