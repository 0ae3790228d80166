"""A periodic job runs every interval once started, never two runs at once, and not after stop."""

from __future__ import annotations

import asyncio

import pytest

from sentri.periodic import PeriodicJob


@pytest.mark.gen_test
async def test_a_run_slower_than_the_interval_makes_the_next_ones_skip_instead_of_stacking():
    running, most_at_once, runs = 0, 0, 0

    async def slow() -> None:
        nonlocal running, most_at_once, runs
        running += 1
        runs += 1
        most_at_once = max(most_at_once, running)
        await asyncio.sleep(0.05)
        running -= 1

    job = PeriodicJob(slow, 0.01)
    job.start()
    job.start()  # a second start keeps the one timer
    await asyncio.sleep(0.3)
    job.stop()
    stopped_at = runs
    await asyncio.sleep(0.1)
    assert most_at_once == 1
    assert 3 <= stopped_at <= 6  # one run per 50 ms, not one per 10 ms
    assert runs == stopped_at and not job.started
