"""Graceful drain: a retry hint to every stream, streams ended spread over the window, exit 0."""

from __future__ import annotations

import asyncio
import random
import re
import time

import pytest

from sentri.drain import RETRY_HINT_MAX_MS, RETRY_HINT_MIN_MS, SPREAD_FRACTION, drain, drain_schedule, retry_hint_ms
from sentri.stream import CloseReason

from .cluster import Instance
from .conftest import JWT_SECRET
from .sseclient import open_request

RETRY_FRAME = re.compile(rb"^retry: (\d+)\n\n$")


def test_schedule_is_empty_for_no_streams():
    assert drain_schedule(0, 10.0, random.Random(1)) == []


def test_schedule_gives_each_stream_its_own_slot_within_the_spread_part_of_the_window():
    offsets = drain_schedule(8, 10.0, random.Random(7))
    slot = 10.0 * SPREAD_FRACTION / 8
    assert len(offsets) == 8
    for index, offset in enumerate(offsets):
        assert index * slot <= offset < (index + 1) * slot
    assert offsets == sorted(offsets)


def test_schedule_with_a_zero_window_ends_everything_at_once():
    assert drain_schedule(3, 0.0, random.Random(3)) == [0.0, 0.0, 0.0]


def test_schedule_differs_between_instances_but_repeats_for_the_same_seed():
    assert drain_schedule(5, 1.0, random.Random(1)) == drain_schedule(5, 1.0, random.Random(1))
    assert drain_schedule(5, 1.0, random.Random(1)) != drain_schedule(5, 1.0, random.Random(2))


def test_retry_hints_stay_in_their_range_and_vary():
    rng = random.Random(5)
    hints = [retry_hint_ms(rng) for _ in range(200)]
    assert all(RETRY_HINT_MIN_MS <= hint < RETRY_HINT_MAX_MS for hint in hints)
    assert len(set(hints)) > 100


@pytest.mark.gen_test(timeout=20)
async def test_drain_sends_a_retry_hint_then_ends_each_stream_cleanly_spread_over_the_window(port, world, context):
    responses = []
    for _ in range(4):
        response = await open_request(port, world.events_path())
        assert (await response.next_event())["type"] == "snapshot"
        responses.append(response)
    closed = []
    observer = context.hub.observer
    original = observer.stream_closed

    def record(stream):
        closed.append((time.monotonic(), stream.close_reason))
        original(stream)

    observer.stream_closed = record
    window = 1.0
    started = time.monotonic()
    report = await drain(context, window, random.Random(11))
    elapsed = time.monotonic() - started
    for response in responses:
        hint = RETRY_FRAME.match(await response.next_frame())
        assert hint is not None and RETRY_HINT_MIN_MS <= int(hint.group(1)) < RETRY_HINT_MAX_MS
        await response.read_to_end()  # the chunked body's last chunk: a clean end, not a cut
        assert response.ended
        assert await response.server_closed()
    assert [reason for _, reason in closed] == [CloseReason.DRAINED] * 4
    offsets = [at - started for at, _ in closed]
    assert offsets == sorted(offsets)
    assert offsets[-1] < window * SPREAD_FRACTION + 0.1
    assert offsets[-1] - offsets[0] > window * SPREAD_FRACTION / 4  # spread, not all at once
    assert report.streams == 4 and report.forced == 0
    assert elapsed <= window + 0.1
    assert context.hub.runs == {}
    print(f"drain of 4 streams over {window}s: ended at {[round(o, 3) for o in offsets]}s, finished {elapsed:.3f}s")


@pytest.mark.gen_test
async def test_a_stream_request_during_the_drain_is_refused_with_503(port, world, context, expect_log):
    expect_log("sentri.access", r"GET /api/v1/runs/RUN-1/events 503$")
    context.draining = True
    response = await open_request(port, world.events_path())
    assert response.status == 503
    assert response.headers["retry-after"] == "1"
    assert await response.read_json() == {"error": "server is shutting down", "retryAfter": 1}


@pytest.mark.gen_test(timeout=30)
async def test_sigterm_drains_open_streams_within_the_window_and_exits_0(world, database_url, tmp_path,
                                                                       session_log_dir):
    serve = Instance({"DATABASE_URL": database_url, "JWT_SECRET": JWT_SECRET, "SENTRI_DRAIN_WINDOW_S": "1.5",
                      "LOG_JSON": "true", "SENTRI_DATA_DIR": str(tmp_path)}, session_log_dir).start()
    try:
        responses = []
        for _ in range(3):
            response = await open_request(serve.port, world.events_path())
            assert (await response.next_event())["type"] == "snapshot"
            responses.append(response)
        started = time.monotonic()
        serve.terminate()
        for response in responses:
            assert RETRY_FRAME.match(await response.next_frame())
            await response.read_to_end(timeout=5)
            assert await response.server_closed()
        status = await asyncio.get_running_loop().run_in_executor(None, serve.process.wait, 10)
        elapsed = time.monotonic() - started
    finally:
        serve.stop()
    assert status == 0
    assert elapsed < 1.5 + 1.0  # the window, plus the process's own shutdown
    log = "\n".join(serve.log_lines())
    assert log.count('"reason":"drained"') == 3
    print(f"sentri serve drained 3 streams and exited 0 in {elapsed:.3f}s after SIGTERM (window 1.5s)")
