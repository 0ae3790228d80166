"""Drain edge cases: a stream that goes live during the drain is ended too, and a reader too
slow to take its last bytes within the window is cut and counted as forced."""

from __future__ import annotations

import asyncio
import random

import pytest

from sentri import sse
from sentri.drain import drain
from sentri.stream import CloseReason

from .lookups import held_lookup
from .socketpairs import fill_kernel_buffers, live_stream, read_exactly


@pytest.mark.gen_test(timeout=15)
async def test_a_stream_that_goes_live_while_the_drain_waits_is_ended_without_a_retry_hint(context):
    first, first_client = live_stream(context.hub, "RUN-1", chunked=True)
    second, second_client = live_stream(context.hub, "RUN-1", chunked=True)
    try:
        draining = asyncio.ensure_future(drain(context, 0.5, random.Random(5)))
        await asyncio.sleep(0)  # the drain sends its hints and waits for the first slot
        assert context.draining
        late, late_client = live_stream(context.hub, "RUN-2", chunked=True)
        report = await draining
        assert report.streams == 3 and report.forced == 0
        assert late.closed and late.close_reason == CloseReason.DRAINED
        # Only the last chunk: it was not there when the hints went out.
        assert await read_exactly(late_client, 100) == sse.LAST_CHUNK
        for stream in (first, second):
            assert stream.close_reason == CloseReason.DRAINED
        assert context.hub.runs == {}
    finally:
        for sock in (first_client, second_client):
            sock.close()
        late_client.close()

@pytest.mark.gen_test(timeout=15)
async def test_a_reader_too_slow_for_the_window_is_cut_when_it_ends_and_counted_as_forced(context):
    slow, slow_client = live_stream(context.hub, "RUN-1", chunked=False)
    try:
        filler = fill_kernel_buffers(slow)
        report = await drain(context, 0.3, random.Random(1))
        assert report.streams == 1 and report.forced == 1
        assert slow.closed and slow.close_reason == CloseReason.DRAINED
        assert 0.3 <= report.seconds < 2.0
        # It got what the kernel had taken before the drain, never the hint queued behind it.
        assert await read_exactly(slow_client, filler + 1) == b"f" * filler
    finally:
        slow_client.close()

@pytest.mark.gen_test
async def test_a_zero_window_ends_every_stream_without_waiting(context):
    streams = [live_stream(context.hub, "RUN-1", chunked=False) for _ in range(3)]
    try:
        report = await drain(context, 0.0, random.Random(2))
        assert report.streams == 3 and report.forced == 0
        for stream, client_end in streams:
            assert stream.close_reason == CloseReason.DRAINED
            hint = await read_exactly(client_end, 100)
            assert hint.startswith(b"retry: ") and hint.endswith(b"\n\n")
    finally:
        for _, client_end in streams:
            client_end.close()


@pytest.mark.gen_test(timeout=15)
async def test_a_connect_still_reading_its_run_when_the_process_exits_is_told_to_come_back(
        port, world, context, expect_log):
    # asyncio cancels the tasks left when the process exits; the connect answers as a drain does.
    expect_log("sentri.access", r"GET /api/v1/runs/RUN-1/events 503$")
    with held_lookup(context) as lookup:
        answer = await lookup.request(port, world.events_path())
        (connect,) = [task for task in asyncio.all_tasks() if task.get_coro().__qualname__ == "RunEventsConnect._serve"]
        connect.cancel()
        response = await answer
        assert response.status == 503
        assert response.headers["retry-after"] == "1"
        assert await response.read_json() == {"error": "server is shutting down", "retryAfter": 1}
    assert connect.cancelled()
    assert context.hub.runs == {}  # its reservation was let go
