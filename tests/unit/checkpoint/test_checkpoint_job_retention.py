"""The job's own retention (retention.JobRetention): count, best metric, period, time."""

from __future__ import annotations

import pytest

from turbok.checkpoint.retention import JobRetention, StepInfo, plan_job_deletions

LOSS = {1: 0.9, 2: 0.1, 3: 0.8, 4: 0.5, 5: 0.7, 6: 0.6}


def _steps() -> list[StepInfo]:
    return [StepInfo(s, created=s * 10.0, metrics={"loss": v}) for s, v in LOSS.items()]


def test_max_to_keep_keeps_the_newest_and_never_the_newest_complete() -> None:
    assert plan_job_deletions(_steps(), JobRetention(max_to_keep=2), newest_complete=6) == [1, 2, 3, 4]
    # a newer step not yet complete everywhere is not the caller's to count: 4 is the newest complete
    assert 4 not in plan_job_deletions(_steps()[:4], JobRetention(max_to_keep=1), newest_complete=4)
    assert plan_job_deletions(_steps(), JobRetention(max_to_keep=2), newest_complete=None) == []
    assert plan_job_deletions(_steps(), JobRetention(), newest_complete=6) == []


def test_best_by_metric_or_function_keeps_the_best_and_the_newest_complete() -> None:
    kept = set(LOSS) - set(plan_job_deletions(_steps(), JobRetention(max_to_keep=2, best_metric="loss"), newest_complete=6))
    assert kept == {2, 4, 6}
    by_fn = JobRetention(max_to_keep=1, best_fn=lambda m: -m["loss"], best_mode="max")
    assert set(LOSS) - set(plan_job_deletions(_steps(), by_fn, newest_complete=6)) == {2, 6}
    unscored = [*_steps(), StepInfo(7, 70.0, None)]
    assert 7 not in plan_job_deletions(unscored, JobRetention(max_to_keep=1, best_metric="loss"), newest_complete=7)


def test_period_and_time_interval_keep_more() -> None:
    policy = JobRetention(max_to_keep=1, keep_period=3)
    assert plan_job_deletions(_steps(), policy, newest_complete=6) == [1, 2, 4, 5]
    timed = JobRetention(max_to_keep=1, keep_time_interval=25.0)
    assert plan_job_deletions(_steps(), timed, newest_complete=6) == [2, 3, 5]


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        JobRetention(max_to_keep=0)
    with pytest.raises(ValueError):
        JobRetention(best_mode="best")
