"""Two instances on one Redis: this test process (instance A, in-process, emits with
``context.hub.emit``) and ``sentri serve`` in a child process (instance B). Both read the
same database. Frames are asserted byte for byte."""

from __future__ import annotations

import asyncio
import re

import pytest

from sentri.stream import CloseReason

from .frames import open_live
from .hubwatch import HubWatch
from .redis_server import FAST_RELAY, instance_b, instance_b_env, live_on_both, redis_server  # noqa: F401 (fixtures)
from .services import wait_until
from .sseclient import open_request

CHANNEL = "sentri:run:RUN-1"
LOG_FRAME = b'data: {"type":"log","message":"[2026-01-01T00:00:00.000Z] step 1"}\n\n'
DONE_FRAME = b'data: {"type":"done","status":"completed","passed":3,"failed":0,"total":3}\n\n'
EVENT_ID_LINE = re.compile(rb"\Aid: [^\r\n]+\n")


def without_id(frame):
    """The frame without its ``id:`` line: ids are the history's business (issue 4), not the relay's."""
    return EVENT_ID_LINE.sub(b"", frame, count=1)


@pytest.fixture
def settings(settings, redis_server):  # noqa: F811 - this module's instance A relays through Redis
    return settings.replace(redis_url=redis_server.url, **FAST_RELAY)




@pytest.mark.gen_test(timeout=30)
async def test_an_event_emitted_on_one_instance_reaches_the_other_exactly_once_and_its_own_client_once(
        port, context, world, redis_server, instance_b):  # noqa: F811
    assert await context.bus.wait_connected(5.0)
    on_a, on_b = await live_on_both(port, instance_b, world)
    assert redis_server.subscribers(CHANNEL) == 2

    context.hub.emit("RUN-1", "log", {"message": "[2026-01-01T00:00:00.000Z] step 1"})
    context.hub.emit("RUN-1", "done", {"status": "completed", "passed": 3, "failed": 0, "total": 3})

    for response in (on_a, on_b):
        assert without_id(await response.next_frame()) == LOG_FRAME  # no _origin, no duplicate before done
        assert without_id(await response.next_frame()) == DONE_FRAME
        assert await response.server_closed()
    # Counted when Redis answers the publisher's pipeline, which may come after the echo the
    # clients were served from (two connections): waited for, not assumed.
    await wait_until(lambda: context.bus.published == 2, what="both publishes counted")


@pytest.mark.gen_test(timeout=30)
async def test_a_node_instance_message_is_delivered_byte_exact_on_both_instances(
        port, context, world, redis_server, instance_b):  # noqa: F811
    on_a, on_b = await live_on_both(port, instance_b, world)
    # What the Node seed publishes: JSON.stringify({type, ...payload, _origin}); 1e-7 is how
    # JavaScript writes that number (Python would write 1e-07), UTF-8 text unescaped.
    node_message = ('{"type":"result","result":{"id":"TC-1","status":"passed","ratio":1e-7,"name":"Übersicht ✓"},'
                    '"_origin":"inst_1767225600000_k3x9qa"}').encode()
    assert redis_server.publish(CHANNEL, node_message) == 2

    expected = ('data: {"type":"result","result":{"id":"TC-1","status":"passed","ratio":1e-7,'
                '"name":"Übersicht ✓"}}\n\n').encode()
    assert without_id(await on_a.next_frame()) == expected
    assert without_id(await on_b.next_frame()) == expected


@pytest.mark.gen_test(timeout=30)
async def test_malformed_messages_and_own_echoes_are_ignored_and_the_relay_keeps_working(
        port, context, world, redis_server, instance_b, expect_log):  # noqa: F811
    on_a, on_b = await live_on_both(port, instance_b, world)
    own_echo = b'{"type":"log","message":"echo","_origin":' + f'"{context.instance_id}"'.encode() + b"}"
    for junk in (b"not json", b"\xff\xfe{", b"[1,2,3]", b'"text"', b'{"message":"no type"}', b'{"type":7}', own_echo):
        redis_server.publish(CHANNEL, junk)
    redis_server.publish("sentri:runs:RUN-1", b'{"type":"log","message":"wrong channel"}')
    # Pretty-printed JSON is re-encoded: a raw line break may never reach the data: line.
    redis_server.publish(CHANNEL, b'{\n  "type": "log",\n\n  "message": "data: injected",\n  "_origin": "w1"\n}')
    redis_server.publish(CHANNEL, b'{"type":"log","message":"still working","_origin":"worker_1"}')

    # A's own echo is A's alone to drop: for B it is an event from another instance.
    assert without_id(await on_b.next_frame()) == b'data: {"type":"log","message":"echo"}\n\n'
    for response in (on_a, on_b):
        assert without_id(await response.next_frame()) == b'data: {"type":"log","message":"data: injected"}\n\n'
        assert without_id(await response.next_frame()) == b'data: {"type":"log","message":"still working"}\n\n'
    assert context.bus.ignored == 7


@pytest.mark.gen_test(timeout=30)
async def test_the_last_listener_leaving_unsubscribes_the_instance(port, context, world, redis_server, instance_b):  # noqa: F811
    watch = HubWatch(context.hub)
    first = await open_live(port, world)
    second = await open_live(port, world)
    on_b = await open_live(instance_b.port, world)
    assert redis_server.subscribers(CHANNEL) == 2  # one subscription per instance, not per client

    first.close()
    await watch.until(lambda: len(watch.closed) == 1)
    assert redis_server.subscribers(CHANNEL) == 2  # A still has a listener
    second.close()
    await watch.until(lambda: len(watch.closed) == 2)
    await wait_until(lambda: redis_server.subscribers(CHANNEL) == 1, what="A unsubscribed")
    on_b.close()
    await wait_until(lambda: redis_server.channels() == [b"sentri:token:revoked"], what="B unsubscribed")


@pytest.mark.gen_test(timeout=30)
async def test_done_from_one_instance_ends_the_streams_of_the_other_and_unsubscribes_it(
        port, context, world, redis_server, instance_b):  # noqa: F811
    on_b = [await open_live(instance_b.port, world) for _ in range(2)]
    await open_live(port, world)
    context.hub.emit("RUN-1", "done", {"status": "completed", "passed": 3, "failed": 0, "total": 3})
    for response in on_b:
        assert without_id(await response.next_frame()) == DONE_FRAME
        assert await response.server_closed()
    await wait_until(lambda: redis_server.subscribers(CHANNEL) == 0, what="both unsubscribed")


@pytest.mark.gen_test(timeout=30)
async def test_done_from_a_node_instance_ends_local_streams_and_unsubscribes(port, context, world, redis_server):  # noqa: F811
    watch = HubWatch(context.hub)
    response = await open_live(port, world)
    redis_server.publish(CHANNEL, b'{"type":"done","status":"failed","passed":1,"failed":2,"total":3,'
                                  b'"_origin":"inst_1767225600000_k3x9qa"}')
    assert without_id(await response.next_frame()) == (
        b'data: {"type":"done","status":"failed","passed":1,"failed":2,"total":3}\n\n')
    assert await response.server_closed()
    await watch.until(lambda: watch.closed and watch.closed[0].close_reason == CloseReason.DONE)
    assert context.hub.runs == {}
    await wait_until(lambda: redis_server.subscribers(CHANNEL) == 0, what="unsubscribed")


@pytest.mark.gen_test(timeout=30)
async def test_a_done_published_while_the_listener_is_being_registered_still_ends_its_stream(
        port, context, world, redis_server):  # noqa: F811
    """docs/stream.md §3: the run is read as running, but its done was published after the listener
    was reserved and before the lookup finished. The stream must still end with done."""
    assert await context.bus.wait_connected(5.0)
    delivered = asyncio.get_running_loop().create_future()
    watch = HubWatch(context.hub)
    watch.event_delivered = lambda run_id, listeners, nbytes: delivered.done() or delivered.set_result(listeners)
    lookup = context.store.open_stream

    async def lookup_after_a_done_is_published(*args, **kwargs):
        # Inside the window: the listener is reserved, the database not read yet.
        assert redis_server.subscribers(CHANNEL) == 1  # the handler waited for the subscription
        redis_server.publish(CHANNEL, b'{"type":"done","status":"completed","passed":3,"failed":0,"total":3,'
                                      b'"_origin":"inst_1767225600000_k3x9qa"}')
        assert await asyncio.wait_for(delivered, 5.0) == 1  # held by the pending stream
        return await lookup(*args, **kwargs)

    context.store.open_stream = lookup_after_a_done_is_published
    response = await open_request(port, world.events_path())
    snapshot = await response.next_event()
    assert snapshot["type"] == "snapshot" and snapshot["run"]["status"] == "running"
    assert without_id(await response.next_frame()) == DONE_FRAME
    assert await response.server_closed()


@pytest.mark.gen_test(timeout=30)
async def test_the_instance_id_names_each_process_and_never_reaches_a_client(port, context, world, redis_server):  # noqa: F811
    response = await open_live(port, world)
    client, subscriber = await redis_server.listen(CHANNEL)
    context.hub.emit("RUN-1", "log", {"message": "x", "_origin": "forged"})
    message = await subscriber.get_message(timeout=5)
    # ``_origin`` is "<instance>|<event id>" (issue 4): Node compares it for equality and strips it.
    frame = await response.next_frame()
    event_id = frame.split(b"\n", 1)[0][len(b"id: "):]
    origin = context.instance_id.encode() + b"|" + event_id
    assert message["data"] == b'{"type":"log","message":"x","_origin":"' + origin + b'"}'
    assert frame == b"id: " + event_id + b'\ndata: {"type":"log","message":"x"}\n\n'
    await subscriber.aclose()
    await client.aclose()
