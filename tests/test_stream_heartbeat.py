"""Heartbeats (docs/stream.md §9) on a short interval: every open stream gets one per interval."""

from __future__ import annotations

import time

import pytest

from .frames import next_data
from .hubwatch import HubWatch
from .lookups import held_lookup
from .sseclient import open_request

INTERVAL_S = 0.05


@pytest.fixture
def settings(settings):
    return settings.replace(heartbeat_interval_s=INTERVAL_S)


async def heartbeat_times(response, count):
    times = []
    while len(times) < count:
        frame = await response.next_frame(timeout=2.0)
        if frame.startswith(b"retry: "):
            continue
        assert frame == b": heartbeat\n\n"
        times.append(time.monotonic())
    return times


@pytest.mark.gen_test
async def test_a_stream_gets_a_heartbeat_comment_every_interval(port, world, context):
    watch = HubWatch(context.hub)
    response = await open_request(port, world.events_path())
    assert (await next_data(response)).startswith(b'data: {"type":"snapshot"')
    await heartbeat_times(response, 6)  # each within 2 s of the one before, each a whole comment
    # The cadence is judged by the hub's own clock, not by when this (shared, possibly loaded)
    # loop got round to reading: the wheel visits a stream once per turn, and catching up
    # after a stall never turns it faster than time passes, so never more than one per
    # interval (plus the edges). A wheel beating on every tick would send ten times as many.
    sent = watch.heartbeat_times
    assert len(sent) >= 6
    assert len(sent) - 1 <= (sent[-1] - sent[0]) / INTERVAL_S + 2, sent


@pytest.mark.gen_test
async def test_heartbeats_and_events_interleave_as_whole_frames(port, world, context):
    response = await open_request(port, world.events_path())
    await next_data(response)
    await heartbeat_times(response, 1)
    context.hub.emit("RUN-1", "log", {"message": "between beats"})
    assert await next_data(response) == b'data: {"type":"log","message":"between beats"}\n\n'
    await heartbeat_times(response, 1)


@pytest.mark.gen_test
async def test_a_finished_run_gets_no_heartbeat_and_a_hung_up_stream_gets_none_either(port, world, rows, context):
    watch = HubWatch(context.hub)
    rows.run(world.project, id="RUN-2", status="completed")
    finished = await open_request(port, world.events_path("RUN-2"))
    await finished.read_to_end()
    assert b": heartbeat" not in finished.body

    leaving = await open_request(port, world.events_path())
    await next_data(leaving)
    leaving.close()
    await watch.closed_count(2)
    assert all(not slot for slot in context.hub._wheel)
    # The wheel keeps turning with nothing on it: the heartbeat count stays where it was.
    sent = []
    context.hub.observer.heartbeats_sent = sent.append
    staying = await open_request(port, world.events_path())
    await next_data(staying)
    await heartbeat_times(staying, 3)
    assert set(sent) == {1}, sent


@pytest.mark.gen_test
async def test_a_slow_database_lookup_delays_neither_heartbeats_nor_events_of_other_streams(
        port, world, rows, context):
    open_stream = await open_request(port, world.events_path())
    await next_data(open_stream)
    rows.run(world.project, id="RUN-2")  # RUN-1's snapshot would be reused, not read
    with held_lookup(context) as lookup:
        waiting = await lookup.request(port, world.events_path("RUN-2"))
        await heartbeat_times(open_stream, 3)  # while the other request's lookup holds a database thread
        context.hub.emit("RUN-1", "llm_token", {"token": "t"})
        assert await next_data(open_stream) == b'data: {"type":"llm_token","token":"t"}\n\n'
        assert not waiting.done()
    late = await waiting
    assert (await next_data(late)).startswith(b'data: {"type":"snapshot"')
