"""Event ids with Redis (issue 4): assigned by one script where the event is published, the same
on every instance; kept in a stream per run; resume across instances; gap repair after a Redis
restart. Instance A is this test process, instance B ``sentri serve`` in a child process, both
on a private Redis and the same database. Frames are asserted byte for byte."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from sentri.history import id_key
from sentri.worker_publisher import RunEventPublisher

from .frames import open_live
from .redis_server import FAST_RELAY, RELAY_CONNECTED, instance_b, live_on_both, redis_server  # noqa: F401 (fixtures)
from .services import wait_until
from .sseclient import open_request

STREAM = "sentri:events:RUN-1"
CHANNEL = "sentri:run:RUN-1"
PUBLISH_TOKEN = "publish-secret-for-ids-0123456789"
RELAY_LOST = re.compile(r"relay lost redis")
LOG_JSON = b'{"type":"log","message":"[2026-01-01T00:00:00.000Z] step 1"}'
DONE_JSON = b'{"type":"done","status":"completed","passed":3,"failed":0,"total":3}'


@pytest.fixture
def settings(settings, redis_server):  # noqa: F811 - instance A relays through the private Redis
    return settings.replace(redis_url=redis_server.url, **FAST_RELAY, history_done_ttl_s=60)


@pytest.fixture
def instance_b_env():
    return {"SENTRI_PUBLISH_TOKEN": PUBLISH_TOKEN}




def parse(frame):
    """(id or None, event) of one event frame."""
    lines = frame.rstrip(b"\n").split(b"\n")
    ids = [line[4:].decode() for line in lines if line.startswith(b"id: ")]
    data = [line[6:] for line in lines if line.startswith(b"data: ")]
    assert len(data) == 1, frame
    return (ids[0] if ids else None), json.loads(data[0])


async def next_event(response):
    while True:
        frame = await response.next_frame()
        if not frame.startswith(b":"):
            return parse(frame)


async def events_until_closed(response):
    events = []
    while True:
        try:
            frame = await response.next_frame()
        except EOFError:
            return events
        if not frame.startswith(b":"):
            events.append(parse(frame))


def strictly_increasing(ids):
    keys = [id_key(event_id) for event_id in ids]
    return None not in keys and all(earlier < later for earlier, later in zip(keys, keys[1:]))


@pytest.mark.gen_test(timeout=30)
async def test_an_event_gets_one_id_in_redis_that_both_instances_send_before_its_data(
        port, context, world, redis_server, instance_b):  # noqa: F811
    assert await context.bus.wait_connected(5.0)
    on_a, on_b = await live_on_both(port, instance_b, world)

    log_id = await context.hub.publish("RUN-1", "log", {"message": "[2026-01-01T00:00:00.000Z] step 1"})
    done_id = await context.hub.publish("RUN-1", "done", {"status": "completed", "passed": 3, "failed": 0, "total": 3})

    assert id_key(log_id) < id_key(done_id)
    for response in (on_a, on_b):
        assert await response.next_frame() == b"id: " + log_id.encode() + b"\ndata: " + LOG_JSON + b"\n\n"
        assert await response.next_frame() == b"id: " + done_id.encode() + b"\ndata: " + DONE_JSON + b"\n\n"
        assert await response.server_closed()
    with redis_server.client() as client:
        assert client.xrange(STREAM) == [
            (log_id.encode(), {b"d": LOG_JSON, b"o": context.instance_id.encode(), b"e": b"0"}),
            (done_id.encode(), {b"d": DONE_JSON, b"o": context.instance_id.encode(), b"e": b"1"}),
        ]
        assert 0 < client.pttl(STREAM) <= 60_000  # SENTRI_HISTORY_DONE_TTL_S after the done


@pytest.mark.gen_test(timeout=30)
async def test_a_node_message_without_id_is_delivered_without_an_id_line_and_not_kept(
        port, context, world, redis_server, instance_b):  # noqa: F811
    on_a, on_b = await live_on_both(port, instance_b, world)
    node_message = b'{"type":"llm_token","token":"Hel","_origin":"inst_1767225600000_k3x9qa"}'
    assert redis_server.publish(CHANNEL, node_message) == 2
    for response in (on_a, on_b):
        assert await response.next_frame() == b'data: {"type":"llm_token","token":"Hel"}\n\n'
    with redis_server.client() as client:
        assert client.exists(STREAM) == 0


@pytest.mark.gen_test(timeout=60)
async def test_two_concurrent_publishers_on_one_run_reach_every_listener_in_strictly_increasing_id_order(
        port, context, world, redis_server, instance_b):  # noqa: F811
    assert await context.bus.wait_connected(5.0)
    on_a, on_b = await live_on_both(port, instance_b, world)
    count = 150

    def worker():
        publisher = RunEventPublisher(redis_server.url, origin="worker_ids")
        try:
            for number in range(count):
                publisher.emit("RUN-1", "llm_token", {"token": f"w{number}"})
        finally:
            publisher.close()

    async def in_process():
        for number in range(count):
            context.hub.emit("RUN-1", "llm_token", {"token": f"a{number}"})
            await asyncio.sleep(0)  # let the worker's messages interleave with ours

    await asyncio.gather(asyncio.get_running_loop().run_in_executor(None, worker), in_process())
    seen = {}
    for name, response in (("a", on_a), ("b", on_b)):
        seen[name] = [await next_event(response) for _ in range(2 * count)]
        ids = [event_id for event_id, _ in seen[name]]
        assert strictly_increasing(ids)
        tokens = [event["token"] for _, event in seen[name]]
        assert sorted(tokens) == sorted([f"a{n}" for n in range(count)] + [f"w{n}" for n in range(count)])
        # Each publisher's own order is kept.
        assert [t for t in tokens if t[0] == "a"] == [f"a{n}" for n in range(count)]
        assert [t for t in tokens if t[0] == "w"] == [f"w{n}" for n in range(count)]
    assert seen["a"] == seen["b"]  # the same ids, in the same order, on both instances


@pytest.mark.gen_test(timeout=60)
async def test_a_client_dropping_from_one_instance_resumes_on_the_other_without_gap_or_duplicate(
        port, context, world, redis_server, instance_b):  # noqa: F811
    assert await context.bus.wait_connected(5.0)
    on_a = await open_live(port, world)
    total = 200
    first_part = 60

    async def produce():
        for number in range(total):
            context.hub.emit("RUN-1", "llm_token", {"token": number})
            await asyncio.sleep(0.002)
        await context.hub.publish("RUN-1", "done", {"status": "completed", "passed": 1, "failed": 0, "total": 1})

    producing = asyncio.ensure_future(produce())
    received = [await next_event(on_a) for _ in range(first_part)]
    on_a.close()  # the client drops while events keep coming
    last_id = received[-1][0]
    on_b = await open_request(instance_b.port, world.events_path(), headers={"Last-Event-ID": last_id})
    assert on_b.status == 200
    assert on_b.headers["sentri-resume"] == "replay"
    received += await events_until_closed(on_b)
    await producing

    assert [event.get("token") for _, event in received] == list(range(total)) + [None]
    assert received[-1][1]["type"] == "done"
    assert strictly_increasing([event_id for event_id, _ in received])


@pytest.mark.gen_test(timeout=90)
async def test_after_a_redis_restart_every_client_has_every_event_exactly_once(
        port, context, world, redis_server, instance_b, expect_log):  # noqa: F811
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ \(")
    expect_log("sentri.revocation", r"revocation check unavailable", required=False)
    expect_log("sentri.resume", r"history unavailable", required=False)
    assert await context.bus.wait_connected(5.0)
    on_a, on_b = await live_on_both(port, instance_b, world)
    before = await context.hub.publish("RUN-1", "llm_token", {"token": "before"})
    for response in (on_a, on_b):
        assert await next_event(response) == (before, {"type": "llm_token", "token": "before"})

    redis_server.stop()  # SIGKILL: Redis and every history in it are gone
    await wait_until(lambda: not context.bus.connected, what="A sees the outage")
    await instance_b.wait_for(RELAY_LOST)
    assert await context.hub.publish("RUN-1", "llm_token", {"token": "A during"}) is None  # no id yet
    published = await open_request(instance_b.port, "/api/v1/runs/RUN-1/events", method="POST",
                                   headers={"Authorization": f"Bearer {PUBLISH_TOKEN}"},
                                   body=b'{"type":"llm_token","token":"B during"}')
    assert (published.status, await published.read_json()) == (202, {"id": None})
    # Each instance's own listeners have its event at once, without an id.
    assert await next_event(on_a) == (None, {"type": "llm_token", "token": "A during"})
    assert await next_event(on_b) == (None, {"type": "llm_token", "token": "B during"})

    redis_server.start()  # same port, empty
    assert await context.bus.wait_connected(15.0)
    await instance_b.wait_for(RELAY_CONNECTED, occurrence=2, timeout_s=15)
    await wait_until(lambda: redis_server.subscribers(CHANNEL) == 2, what="both resubscribed")
    # The other instance's outage event arrives (relayed late, or caught up from history).
    assert (await next_event(on_a))[1] == {"type": "llm_token", "token": "B during"}
    assert (await next_event(on_b))[1] == {"type": "llm_token", "token": "A during"}
    after = await context.hub.publish("RUN-1", "llm_token", {"token": "after"})
    done = await context.hub.publish("RUN-1", "done", {"status": "completed", "passed": 1, "failed": 0, "total": 1})
    for response in (on_a, on_b):
        assert await events_until_closed(response) == [
            (after, {"type": "llm_token", "token": "after"}),
            (done, {"type": "done", "status": "completed", "passed": 1, "failed": 0, "total": 1}),
        ]
    assert context.bus.dropped == 0


@pytest.mark.gen_test(timeout=30)
async def test_an_event_published_while_the_relay_was_cut_off_is_caught_up_from_history_once(
        port, context, world, redis_server, expect_log):  # noqa: F811
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ \(")
    assert await context.bus.wait_connected(5.0)
    on_a = await open_live(port, world)
    before = await context.hub.publish("RUN-1", "llm_token", {"token": "before"})
    assert await next_event(on_a) == (before, {"type": "llm_token", "token": "before"})

    # Synchronously, so this process's loop cannot reconnect in between: cut the relay's
    # subscription, then publish. No pub/sub message can reach A; only gap repair can.
    client = redis_server.client()
    publisher = RunEventPublisher(redis_server.url, origin="worker_gap")
    try:
        assert client.client_kill_filter(_type="pubsub") == 1
        gap, receivers = publisher.publish("RUN-1", "llm_token", {"token": "gap"})
        assert receivers == 0
    finally:
        publisher.close()
        client.close()

    assert await next_event(on_a) == (gap, {"type": "llm_token", "token": "gap"})
    assert context.bus.caught_up == 1
    after = await context.hub.publish("RUN-1", "llm_token", {"token": "after"})
    assert await next_event(on_a) == (after, {"type": "llm_token", "token": "after"})  # the gap event not twice


@pytest.mark.gen_test(timeout=30)
async def test_a_client_holding_the_done_gets_204_from_the_other_instance(
        port, context, world, redis_server, instance_b):  # noqa: F811
    assert await context.bus.wait_connected(5.0)
    on_a = await open_live(port, world)
    done = await context.hub.publish("RUN-1", "done", {"status": "completed", "passed": 1, "failed": 0, "total": 1})
    assert (await next_event(on_a))[0] == done
    again = await open_request(instance_b.port, world.events_path(), headers={"Last-Event-ID": done})
    assert again.status == 204


@pytest.mark.gen_test(timeout=30)
async def test_an_id_from_another_runs_stream_gets_a_snapshot_never_that_runs_events(
        port, context, world, redis_server):  # noqa: F811
    world.rows.run(world.project, id="RUN-2")
    assert await context.bus.wait_connected(5.0)
    own = await context.hub.publish("RUN-1", "llm_token", {"token": "mine"})
    other = await context.hub.publish("RUN-2", "llm_token", {"token": "theirs"})
    await context.hub.publish("RUN-2", "llm_token", {"token": "theirs, later"})
    assert id_key(own) < id_key(other)
    response = await open_request(port, world.events_path(), headers={"Last-Event-ID": other})
    assert response.status == 200
    assert response.headers["sentri-resume"] == "snapshot"
    snapshot_id, snapshot = await next_event(response)
    assert (snapshot_id, snapshot["type"]) == (own, "snapshot")
    later = await context.hub.publish("RUN-1", "llm_token", {"token": "mine, later"})
    assert await next_event(response) == (later, {"type": "llm_token", "token": "mine, later"})


class TestOutboxFull:
    @pytest.fixture
    def settings(self, settings):
        return settings.replace(relay_max_pending_bytes=300, relay_ping_interval_s=0.3)

    @pytest.mark.gen_test(timeout=30)
    async def test_an_event_that_finds_the_outbox_full_still_reaches_local_listeners_and_none_is_lost(
            self, port, context, world, redis_server, expect_log):  # noqa: F811
        expect_log("sentri.relay", r"relay lost redis .*RelayTimeoutError")
        expect_log("sentri.revocation", r"revocation check unavailable", required=False)
        assert await context.bus.wait_connected(5.0)
        on_a = await open_live(port, world)
        tokens = [str(number) * 100 for number in range(4)]
        redis_server.pause()  # SIGSTOP: the first publish hangs, the next ones wait in the outbox
        try:
            context.hub.emit("RUN-1", "llm_token", {"token": tokens[0]})
            await wait_until(lambda: not context.bus._outbox, what="the first publish in flight")
            for token in tokens[1:]:  # 2 x ~130 bytes fit in 300; the third does not
                context.hub.emit("RUN-1", "llm_token", {"token": token})
            assert context.bus.dropped == 1
            # Not relayed, but delivered here at once, without an id (Redis is still paused).
            assert await next_event(on_a) == (None, {"type": "llm_token", "token": tokens[3]})
            await wait_until(lambda: not context.bus.connected, what="the watchdog gives up on redis")
            # Then the ones that were waiting for Redis, in order, without ids.
            for token in tokens[:3]:
                assert await next_event(on_a) == (None, {"type": "llm_token", "token": token})
        finally:
            redis_server.resume()
        assert await context.bus.wait_connected(15.0)
        await wait_until(lambda: context.bus.published >= 3, what="the kept events published late")
        with redis_server.client() as client:
            kept = [json.loads(fields[b"d"])["token"] for _, fields in client.xrange(STREAM)]
        assert kept == tokens[:3]
        after = await context.hub.publish("RUN-1", "llm_token", {"token": "after"})
        assert await next_event(on_a) == (after, {"type": "llm_token", "token": "after"})  # none twice
