"""The group commit's writer thread: work runs in the order given, off the IOLoop, and its
result, its exception or its caller's cancellation come back as they would from an executor."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sentri.serial_thread import SerialThread


@pytest.fixture
def serial():
    thread = SerialThread("test-writer")
    yield thread
    thread.close()


@pytest.mark.gen_test
async def test_work_runs_off_the_ioloop_one_job_after_another_in_the_order_given(serial):
    ran = []

    def job(n):
        ran.append((n, threading.current_thread().name))
        return n * 10

    results = await asyncio.gather(*(serial.run(lambda n=n: job(n)) for n in range(50)))
    assert results == [n * 10 for n in range(50)]
    assert ran == [(n, "test-writer") for n in range(50)]


@pytest.mark.gen_test
async def test_an_exception_in_the_work_is_raised_to_its_caller_only(serial):
    def fails():
        raise ValueError("the database refused it")

    failing = asyncio.ensure_future(serial.run(fails))
    after = asyncio.ensure_future(serial.run(lambda: "still served"))
    with pytest.raises(ValueError, match="the database refused it"):
        await failing
    assert await after == "still served"


@pytest.mark.gen_test
async def test_a_cancelled_caller_lets_its_started_work_finish_and_the_next_job_run(serial):
    started, release = threading.Event(), threading.Event()
    finished = []

    def slow():
        started.set()
        release.wait(5)
        finished.append("slow")
        return "dropped"

    caller = asyncio.ensure_future(serial.run(slow))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    caller.cancel()
    release.set()
    assert await serial.run(lambda: "next") == "next"
    assert finished == ["slow"]
    assert caller.cancelled()


def test_close_finishes_the_work_already_given_then_ends_the_thread():
    serial = SerialThread("closing-writer")
    done = []
    loop = asyncio.new_event_loop()
    try:
        pending = [loop.create_task(serial.run(lambda n=n: done.append(n))) for n in range(3)]
        loop.run_until_complete(asyncio.sleep(0))  # the jobs are queued
        serial.close()
        loop.run_until_complete(asyncio.gather(*pending))
    finally:
        loop.close()
    assert done == [0, 1, 2]
    assert not serial._thread.is_alive()
