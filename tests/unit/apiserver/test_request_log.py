"""The API server's request log: one line per request, whatever the path and query carry."""

from __future__ import annotations

import logging

import pytest

from .conftest import Api


async def test_a_newline_in_the_path_cannot_forge_a_log_line(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="turbok.apiserver.app")
    forged = "%0A2024-01-01 00:00:00 WARNING turbok.apiserver: forged%1B[31m"
    r = await api.get(f"/api/v1/namespaces/default/configmaps/x{forged}?q=%0Ay", allow_redirects=False)
    assert r.status >= 400
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "turbok.apiserver.app"]
    assert len(lines) == 1, lines
    # aiohttp 3.14 keeps path_qs percent-encoded; printable() keeps it one line even where it is decoded.
    assert "\n" not in lines[0] and "\x1b" not in lines[0] and "forged" in lines[0], lines
