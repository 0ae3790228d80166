"""Cleanups a cancel cannot cut short (sentri.cancel_safe), and the relay's probe that needs one:
``RedisBus.close`` cancels the relay again every 50 ms, and a connection whose close was cut
short stayed open until the garbage collector warned (the flake of issue 14)."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from sentri import cancel_safe
from sentri.redis_slots import probe

from .redis_server import redis_server  # noqa: F401 (fixture)


@pytest.mark.gen_test(timeout=10)
async def test_a_cleanup_runs_to_its_end_through_repeated_cancels_and_the_cancel_is_raised_after():
    steps = []

    async def cleanup():
        for step in range(5):
            await asyncio.sleep(0.01)
            steps.append(step)

    async def finally_block():
        await cancel_safe.finish(cleanup())
        steps.append("went on after the cancels")

    task = asyncio.ensure_future(finally_block())
    for _ in range(4):
        await asyncio.sleep(0.005)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == [0, 1, 2, 3, 4]


@pytest.mark.gen_test(timeout=10)
async def test_an_uncancelled_cleanup_gives_its_result_or_its_error():
    async def answer():
        return 42

    async def failing():
        raise OSError("socket already gone")

    assert await cancel_safe.finish(answer()) == 42
    with pytest.raises(OSError, match="socket already gone"):
        await cancel_safe.finish(failing())


@pytest.mark.gen_test(timeout=60)
async def test_a_probe_cancelled_twice_at_any_point_closes_its_connection(redis_server):  # noqa: F811
    # The first cancel lands at each of the probe's first 40 suspensions, the second after
    # another 0-11: before the fix, about one pair in 30 left the connection open.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for first in range(40):
            for gap in range(12):
                probing = asyncio.ensure_future(probe(redis_server.url, 5.0))
                for _ in range(first):
                    await asyncio.sleep(0)
                probing.cancel()
                for _ in range(gap):
                    await asyncio.sleep(0)
                probing.cancel()
                await asyncio.wait([probing], timeout=5)
                assert probing.done()
                if not probing.cancelled():
                    probing.exception()  # it finished before the first cancel
        await asyncio.sleep(0.05)
        gc.collect()
    assert [str(warning.message) for warning in caught if issubclass(warning.category, ResourceWarning)] == []
