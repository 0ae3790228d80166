"""Recording a run's end: counters only when they are numbers, a duration only when the run
has a start time that can be read."""

from __future__ import annotations

import datetime

import pytest

from sentri import writes
from sentri.models import Run
from sentri.writes import finish_run, iso_now


async def finished(context, run_id, done):  # type: ignore[no-untyped-def]
    await context.store.run(lambda: finish_run(run_id, done))
    return await context.store.run(lambda: Run.select(Run.status, Run.passed, Run.failed, Run.total, Run.duration,
                                                      Run.finishedAt).where(Run.id == run_id).dicts().first())


@pytest.mark.gen_test
async def test_counters_that_are_not_numbers_are_not_written(context, world):
    with context.store.database.connection_context():
        Run.update(startedAt=iso_now()).where(Run.id == "RUN-1").execute()
    row = await finished(context, "RUN-1", {"status": "failed", "passed": "3", "failed": 1, "total": None})
    assert (row["status"], row["passed"], row["failed"], row["total"]) == ("failed", None, 1, None)
    assert row["finishedAt"] and row["duration"] >= 0


@pytest.mark.gen_test
async def test_a_run_without_a_start_time_gets_no_duration(context, world, rows):
    rows.run(world.project, id="RUN-2", startedAt=None)
    row = await finished(context, "RUN-2", {"status": "completed", "passed": 2})
    assert (row["status"], row["passed"], row["duration"]) == ("completed", 2, None)
    assert row["finishedAt"]


@pytest.mark.gen_test
async def test_a_run_whose_start_time_cannot_be_read_gets_no_duration_but_still_ends(context, world, rows):
    rows.run(world.project, id="RUN-3", startedAt="yesterday")
    row = await finished(context, "RUN-3", {})
    assert (row["status"], row["duration"]) == ("completed", None)
    assert row["finishedAt"]


def test_a_done_never_writes_a_value_a_32_bit_integer_column_cannot_hold(context, world):
    """PostgreSQL's INTEGER is 32-bit: a run started weeks ago, or huge counters, would fail the write."""
    with context.store.database.connection_context():
        Run.update(startedAt="2020-01-01T00:00:00.000Z").where(Run.id == "RUN-1").execute()
        finish_run("RUN-1", {"status": "completed", "passed": 2**31, "failed": -1, "total": 3})
        row = Run.select(Run.status, Run.passed, Run.failed, Run.total, Run.duration).where(
            Run.id == "RUN-1").dicts().first()
    assert row == {"status": "completed", "passed": None, "failed": None, "total": 3, "duration": None}


@pytest.mark.parametrize("now, text", [(1767323045.678901, "2026-01-02T03:04:05.678Z"),
                                       (1767323045.0, "2026-01-02T03:04:05.000Z"),
                                       (1767323046.999, "2026-01-02T03:04:06.999Z")])
def test_iso_now_is_to_iso_string_of_the_clock_also_from_its_cached_second(monkeypatch, now, text):
    monkeypatch.setattr(writes.time, "time", lambda: now)
    assert iso_now() == text
    assert iso_now() == text  # the second's text now comes from the cache
    moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    assert iso_now(moment) == text
