"""A running run's streams: fan-out, done closing all, release on disconnect, done during the lookup."""

from __future__ import annotations

import pytest

from .frames import next_data
from .hubwatch import HubWatch, fd_is_watched
from .lookups import held_lookup
from .sseclient import open_request

LOG = b'data: {"type":"log","message":"[2026-01-01T00:00:00.000Z] step \xe2\x9c\x93"}\n\n'
DONE = b'data: {"type":"done","status":"completed","passed":2,"failed":0,"total":2,"testsGenerated":2}\n\n'


def assert_released(context, fds):
    assert context.hub.runs == {}
    assert context.hub.stream_count == 0
    assert all(not slot for slot in context.hub._wheel), "a stream is left on the heartbeat wheel"
    for fd in fds:
        assert not fd_is_watched(fd), f"fd {fd} still registered on the loop"


@pytest.mark.gen_test
async def test_an_event_reaches_every_listener_with_the_same_bytes_and_done_closes_them_all(port, world, context):
    watch = HubWatch(context.hub)
    responses = [await open_request(port, world.events_path()) for _ in range(3)]
    for response in responses:
        assert (await response.next_event())["type"] == "snapshot"
    await watch.opened_count(3)
    streams = list(context.hub.runs["RUN-1"])
    assert len(streams) == 3
    fds = [stream.sock.fileno() for stream in streams]

    context.hub.emit("RUN-1", "log", {"message": "[2026-01-01T00:00:00.000Z] step \u2713"})
    context.hub.emit("RUN-1", "done", {"status": "completed", "passed": 2, "failed": 0, "total": 2,
                                       "testsGenerated": 2})
    for response in responses:
        assert await next_data(response) == LOG
        assert await next_data(response) == DONE
        assert await response.server_closed()
    await watch.closed_count(3)
    assert {stream.close_reason for stream in streams} == {"done"}
    assert all(stream.sock is None and stream.deadline is None for stream in streams)
    assert_released(context, fds)


@pytest.mark.gen_test
async def test_events_of_another_run_do_not_reach_a_listener(port, world, rows, context):
    rows.run(world.project, id="RUN-2")
    one = await open_request(port, world.events_path("RUN-1"))
    two = await open_request(port, world.events_path("RUN-2"))
    await one.next_event()
    await two.next_event()
    context.hub.emit("RUN-2", "llm_token", {"token": "hi"})
    context.hub.emit("RUN-1", "screenshot", {"testId": "TC-1", "screenshotPath": "/a.png"})
    assert await next_data(two) == b'data: {"type":"llm_token","token":"hi"}\n\n'
    assert await next_data(one) == b'data: {"type":"screenshot","testId":"TC-1","screenshotPath":"/a.png"}\n\n'
    assert sorted(context.hub.runs) == ["RUN-1", "RUN-2"]


@pytest.mark.gen_test
async def test_an_event_for_a_run_without_listeners_costs_nothing_and_registers_nothing(port, world, context):
    context.hub.emit("RUN-404", "done", {"status": "completed"})
    context.hub.emit("RUN-404", "log", {"message": "x"})
    assert context.hub.runs == {}


@pytest.mark.gen_test
async def test_a_client_that_hangs_up_releases_its_registry_entry_wheel_slot_and_socket(port, world, context):
    watch = HubWatch(context.hub)
    staying = await open_request(port, world.events_path())
    leaving = await open_request(port, world.events_path())
    await staying.next_event()
    await leaving.next_event()
    await watch.opened_count(2)
    assert context.hub.listener_count("RUN-1") == 2
    stream_fds = {stream: stream.sock.fileno() for stream in context.hub.runs["RUN-1"]}

    leaving.close()
    await watch.closed_count(1)
    gone = watch.closed[0]
    assert gone.close_reason == "client_gone" and gone.sock is None
    assert context.hub.listener_count("RUN-1") == 1
    assert not fd_is_watched(stream_fds[gone])
    assert sum(len(slot) for slot in context.hub._wheel) == 1

    staying.close()
    await watch.closed_count(2)
    assert_released(context, stream_fds.values())
    # The run has no listener left: a later event is dropped at once.
    context.hub.emit("RUN-1", "log", {"message": "nobody"})
    assert context.hub.runs == {}


@pytest.mark.gen_test
async def test_a_done_published_while_the_run_is_being_read_still_ends_the_stream(port, world, context):
    with held_lookup(context) as lookup:
        request = await lookup.request(port, world.events_path())
        assert context.hub.listener_count("RUN-1") == 1  # registered before the read (docs/stream.md §3)
        context.hub.emit("RUN-1", "done", {"status": "failed", "passed": 0})
        lookup.release()  # the lookup reads the row as it is: still "running"
        response = await request
    snapshot = await response.next_event()
    assert snapshot["run"]["status"] == "running"
    assert await next_data(response) == b'data: {"type":"done","status":"failed","passed":0}\n\n'
    assert await response.server_closed()
    assert context.hub.runs == {}


@pytest.mark.gen_test
async def test_events_emitted_while_the_run_is_being_read_follow_the_snapshot_in_order(port, world, context):
    with held_lookup(context) as lookup:
        request = await lookup.request(port, world.events_path())
        for n in range(3):
            context.hub.emit("RUN-1", "llm_token", {"token": str(n)})
        lookup.release()
        response = await request
    assert (await response.next_event())["type"] == "snapshot"
    for n in range(3):
        assert await next_data(response) == b'data: {"type":"llm_token","token":"%d"}\n\n' % n
