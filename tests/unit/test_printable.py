"""Untrusted text is shown literally: escaped controls, no rich markup, one log line per record."""

from __future__ import annotations

import io
import logging

import pytest

from turbok.cli import output
from turbok.printable import OneLineFormatter, printable

HOSTILE = "a\nb\r\x1b[31mred\x1b]0;title\x07\t\x9b2J\u202eevil\u2028\udcff"


def test_printable_escapes_controls_bidi_separators_and_surrogates() -> None:
    shown = printable(HOSTILE)
    assert shown == "a\\nb\\r\\x1b[31mred\\x1b]0;title\\x07\\t\\x9b2J\\u202eevil\\u2028\\udcff"
    assert shown.isprintable()
    assert printable("plain text, ünïcode, C:\\path [x]") == "plain text, ünïcode, C:\\path [x]"


def test_say_prints_markup_and_emoji_codes_literally(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    monkeypatch.setattr(output, "console", Console(file=io.StringIO(), width=200))
    output.say("[blink]X [bold]y[/] :warning: \x1b[2J")
    text = output.console.file.getvalue()  # type: ignore[attr-defined]
    assert text == "[blink]X [bold]y[/] :warning: \\x1b[2J\n"


def test_table_cells_and_errors_are_literal(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=io.StringIO(), width=200)
    table = Table()
    table.add_column("NAME")
    table.add_row(output.cell("[blink]X\x1b[31m"))
    console.print(table)
    assert "[blink]X\\x1b[31m" in console.file.getvalue()  # type: ignore[attr-defined]
    monkeypatch.setattr(output, "err_console", Console(file=io.StringIO(), width=200))
    output.say_error("no such file: [red]a\nb")
    said = output.err_console.file.getvalue()  # type: ignore[attr-defined]
    assert said == "error: no such file: [red]a\\nb\n"


def test_one_line_formatter_keeps_each_record_on_one_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("turbok.test.printable")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("GET %s", "/x\nWARNING forged")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "WARNING GET /x\\nWARNING forged\n"
