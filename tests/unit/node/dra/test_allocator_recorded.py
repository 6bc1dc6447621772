"""turbok's allocator against kube-scheduler 1.37.2's recorded answers (tests/data/dra/recorded.json).

The scenarios and the recording: tests/compat/test_dra_allocation.py (TURBOK_RECORD_DRA=1), which also
runs both side by side when the kube binaries are there. Here the recorded answers stand in for them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.dra_scenarios import RECORDED, SCENARIOS, turbok_answer

RECORDED_ANSWERS: dict[str, Any] = json.loads(RECORDED.read_text())


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_same_allocation_as_recorded_kube_scheduler(scenario: dict[str, Any]) -> None:
    assert scenario["name"] in RECORDED_ANSWERS, "record it: TURBOK_RECORD_DRA=1 pytest tests/compat/test_dra_allocation.py"
    assert turbok_answer(scenario) == RECORDED_ANSWERS[scenario["name"]]
