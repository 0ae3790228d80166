"""The relay's less travelled paths, each against a private Redis: plain (id-less) messages of a
hub whose history numbers events itself, what an outage does to them and to subscription
waits, start/close in odd orders, malformed revocation notices, and session tasks that
swallow their cancellation as redis-py sometimes does."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import socket
import time
import types
import warnings

import pytest

from sentri import sse
from sentri.bus import Bus
from sentri.bus import messages as wire
from sentri.bus import redis as relay
from sentri.bus.redis import CLOSE_TIMEOUT_S, RedisBus, describe_url
from sentri.history import MemoryHistory
from sentri.hub import Hub
from sentri.redis_history import stream_key
from sentri.stream import Frame
from sentri.worker_publisher import RunEventPublisher

from .redis_server import redis_server  # noqa: F401 (fixture)
from .services import wait_until
from .socketpairs import live_stream, read_exactly
from .subscription_changes import all_leave_and_the_last_comes_back

INSTANCE = "py_edges"


def numbering_here_hub(bus):
    """A hub whose history gives ids itself: the relay then carries plain Node-style messages."""
    history = MemoryHistory(max_events=10, max_bytes=1 << 20, max_runs=10, done_ttl_s=60.0, idle_ttl_s=60.0)
    return Hub(heartbeat_interval_s=30.0, max_listeners_per_run=10, max_writable_bytes=1 << 20, bus=bus,
               history=history)


async def next_data(pubsub):
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    assert message is not None, "nothing published within 5 s"
    return message["data"]


async def stop_listening(client, pubsub):
    await pubsub.aclose()
    await client.aclose()


def test_log_lines_name_the_redis_host_without_password_and_fall_back_to_6379_for_a_bad_port():
    assert describe_url("redis://:s3cret@cache.internal:6380/0") == "cache.internal:6380"
    assert describe_url("redis://:s3cret@cache.internal:notaport/0") == "cache.internal:6379"
    assert describe_url("redis://:s3cret@cache.internal:99999/0") == "cache.internal:6379"


def test_the_in_process_bus_cannot_number_events():
    bus = Bus()
    assert bus.assigns_ids is False
    with pytest.raises(NotImplementedError, match="this bus does not assign ids"):
        bus.publish_event("RUN-1", b'{"type":"log"}', False)


def test_a_message_whose_origin_is_not_the_last_key_is_re_encoded_without_it():
    relayed = wire.decode_relayed(b'{"type":"log","_origin":"node-1","message":"a\\u00e9"}', INSTANCE)
    assert relayed == wire.Relayed("log", '{"type":"log","message":"aé"}'.encode(), None, False)


@pytest.mark.gen_test(timeout=30)
async def test_with_a_history_numbering_events_here_the_relay_publishes_plain_messages_and_drops_what_does_not_fit(
        redis_server):  # noqa: F811
    client, pubsub = await redis_server.listen("sentri:run:RUN-1")
    bus = RedisBus(redis_server.url, INSTANCE, max_pending_bytes=60)
    hub = numbering_here_hub(bus)
    try:
        hub.emit("RUN-1", "log", {"message": "before start"})  # not connected: dropped, counted
        assert bus.dropped == 1
        await bus.start()
        assert await bus.wait_connected(5.0)
        hub.emit("RUN-1", "log", {"message": "x" * 40})  # 76 bytes with the origin: over the 60-byte outbox
        assert bus.dropped == 2
        hub.emit("RUN-1", "log", {"message": "plain"})
        assert await next_data(pubsub) == b'{"type":"log","message":"plain","_origin":"py_edges"}'
        await wait_until(lambda: bus.published == 1, what="the publish counted")
        assert bus.dropped == 2
    finally:
        await bus.close()
        await stop_listening(client, pubsub)


@pytest.mark.gen_test(timeout=30)
async def test_an_outage_drops_plain_messages_in_flight_and_queued_and_ends_subscription_waits_with_false(
        redis_server, expect_log):  # noqa: F811
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ \(RelayTimeoutError: no reply from redis")
    bus = RedisBus(redis_server.url, INSTANCE, ping_interval_s=0.2, retry_max_s=0.2)
    hub = numbering_here_hub(bus)
    await bus.start()
    try:
        assert await bus.wait_connected(5.0)
        redis_server.pause()  # SIGSTOP: nothing answers, nothing fails yet
        try:
            hub.emit("RUN-1", "log", {"message": "in flight"})
            await wait_until(lambda: bus._outbox_bytes == 0, what="the sender took the first message")
            hub.emit("RUN-1", "log", {"message": "queued 1"})
            hub.emit("RUN-1", "log", {"message": "queued 2"})
            bus.subscribe("RUN-2")
            started = time.monotonic()
            assert await bus.wait_subscribed("RUN-2", 10.0) is False  # the watchdog's disconnect ends the wait
            assert time.monotonic() - started < 5.0
            assert not bus.connected
            assert bus.dropped == 3
            assert bus._outbox_bytes == 0
        finally:
            redis_server.resume()
        assert await bus.wait_connected(10.0)
        assert await bus.wait_subscribed("RUN-2", 5.0) is True
    finally:
        await bus.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_relay_started_twice_runs_one_connection(redis_server):  # noqa: F811
    bus = RedisBus(redis_server.url, INSTANCE)
    try:
        await bus.start()
        await bus.start()
        assert await bus.wait_connected(5.0)
        assert (bus.attempts, bus.connects) == (1, 1)
        assert redis_server.subscribers(wire.TOKEN_REVOKED_CHANNEL) == 1
    finally:
        await bus.close()
    assert not bus.connected


@pytest.mark.gen_test(timeout=30)
async def test_a_relay_without_a_hub_keeps_events_from_before_start_and_publishes_them_flagged_local(
        redis_server):  # noqa: F811
    client, pubsub = await redis_server.listen("sentri:run:RUN-1")
    bus = RedisBus(redis_server.url, INSTANCE)
    try:
        await bus.close()  # never started: nothing to stop
        assert not bus.connected
        bus.subscribe("RUN-1")  # before start: remembered, subscribed once connected
        assert await bus.publish_event("RUN-1", b'{"type":"log","message":"early"}', False) is None
        await bus.start()
        assert await bus.wait_connected(5.0)
        data = await next_data(pubsub)
        assert re.fullmatch(rb'\{"type":"log","message":"early","_origin":"py_edges\|[0-9]+-[0-9]+\|local"\}', data), \
            data
        assert await bus.wait_subscribed("RUN-1", 5.0) is True
        assert bus.dropped == 0
    finally:
        await bus.close()
        await stop_listening(client, pubsub)


@pytest.mark.gen_test(timeout=30)
async def test_a_publish_failing_before_its_pipeline_runs_gives_the_connection_back(redis_server, expect_log):  # noqa: F811
    # redis-py sends SCRIPT EXISTS for a pipeline holding scripts before its own try/finally:
    # any error there (here Redis refusing the command; in CI a Redis going away) used to leave
    # the pipeline holding its connection until the collector warned "Unclosed client session".
    expect_log("sentri.relay", r"relay lost redis at .*NoPermissionError")
    client = redis_server.client()
    client.execute_command("ACL", "SETUSER", "default", "-script|exists")
    client.close()
    bus = RedisBus(redis_server.url, INSTANCE, retry_max_s=0.05)
    await bus.start()
    assert await bus.wait_connected(5.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        publishing = bus.publish_event("RUN-1", b'{"type":"log","message":"refused"}', False)
        await wait_until(lambda: bus.attempts >= 3, what="the session failing on the publish, twice")
        await bus.close()
        gc.collect()
    assert [str(warning.message) for warning in caught if issubclass(warning.category, ResourceWarning)] == []
    assert await publishing is None  # kept and delivered here, without an id, not lost


@pytest.mark.parametrize("attached", [True, False], ids=["with a hub", "without a hub"])
@pytest.mark.gen_test(timeout=30)
async def test_malformed_revocation_notices_are_ignored_and_good_ones_reach_the_callbacks(
        redis_server, attached):  # noqa: F811
    bus = RedisBus(redis_server.url, INSTANCE)
    hub = numbering_here_hub(bus) if attached else None
    notices = []
    bus.revocation_callbacks.append(lambda jti, expires: notices.append((jti, expires)))
    await bus.start()
    try:
        assert await bus.wait_connected(5.0)
        for data in (b"not json", b"\xff\xfe", b"[1]", json.dumps({"jti": ""}).encode(), b'{"exp":1}',
                     b'{"jti":"j-1","exp":"soon"}', b'{"jti":"j-2","exp":1700000000}'):
            assert redis_server.publish(wire.TOKEN_REVOKED_CHANNEL, data) == 1
        await wait_until(lambda: bus.received == 7, what="all notices read")
        assert bus.ignored == 5
        assert notices == [("j-1", None), ("j-2", 1700000000)]
        if hub is not None:
            assert hub.runs == {}  # nothing open, nothing closed
    finally:
        await bus.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_channel_joined_left_and_rejoined_before_redis_replies_is_confirmed_by_the_last_reply(
        redis_server):  # noqa: F811
    bus = RedisBus(redis_server.url, INSTANCE)
    await bus.start()
    try:
        assert await bus.wait_connected(5.0)
        redis_server.pause()  # the three commands are sent; their replies come after resume
        try:
            for change, joined in ((bus.subscribe, True), (bus.unsubscribe, False), (bus.subscribe, True)):
                change("RUN-3")
                await wait_until(lambda joined=joined: ("sentri:run:RUN-3" in bus._sent) is joined,
                                 what="the change sent")
            assert bus._replies_due == {"sentri:run:RUN-3": 3}
        finally:
            redis_server.resume()
        assert await bus.wait_subscribed("RUN-3", 5.0) is True
        assert bus._replies_due == {}
        assert redis_server.subscribers("sentri:run:RUN-3") == 1
    finally:
        await bus.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_channel_wanted_again_while_the_relay_unsubscribes_the_left_runs_one_by_one_is_never_unsubscribed(
        redis_server, monkeypatch):  # noqa: F811
    monkeypatch.setattr(relay, "SUBSCRIBE_BATCH", 1)  # a command per channel, the loop between each
    bus = RedisBus(redis_server.url, INSTANCE)
    await bus.start()
    try:
        assert await bus.wait_connected(5.0)
        unsubscribed = await all_leave_and_the_last_comes_back(bus, monkeypatch, ["RUN-1", "RUN-2", "RUN-3"])
        assert unsubscribed == [["sentri:run:RUN-1"], ["sentri:run:RUN-2"]]
        assert redis_server.subscribers("sentri:run:RUN-3") == 1
        assert "sentri:run:RUN-3" in bus._confirmed
    finally:
        await bus.close()


class KeepAliveSwallowingItsFirstCancel(RedisBus):
    """redis-py can swallow a CancelledError inside a command and carry on (see RedisBus.close):
    here the keep-alive task does that once, then waits where the next cancel lands."""

    swallowed = 0

    async def _keep_alive(self, pubsub):
        try:
            await super()._keep_alive(pubsub)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
            await asyncio.Event().wait()


@pytest.mark.gen_test(timeout=30)
async def test_a_session_task_swallowing_its_cancel_does_not_keep_the_relay_from_reconnecting(
        redis_server, expect_log):  # noqa: F811
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+")
    bus = KeepAliveSwallowingItsFirstCancel(redis_server.url, INSTANCE, retry_max_s=0.2)
    await bus.start()
    try:
        assert await bus.wait_connected(5.0)
        redis_server.stop()
        await wait_until(lambda: not bus.connected, what="the outage seen")
        redis_server.start()
        assert await bus.wait_connected(10.0)
        assert (bus.swallowed, bus.connects) == (1, 2)
    finally:
        await bus.close()


class SessionTurningCancelIntoAnError(RedisBus):
    """A session whose cancel comes out as a connection error (a cancel swallowed mid-command)."""

    async def _session(self):
        try:
            await super()._session()
        except asyncio.CancelledError:
            raise ConnectionError("cancelled mid-command") from None


@pytest.mark.gen_test(timeout=30)
async def test_closing_a_relay_whose_session_swallows_the_cancel_still_ends_it_promptly(
        redis_server, expect_log):  # noqa: F811
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ \(ConnectionError: cancelled mid-command\)")
    bus = SessionTurningCancelIntoAnError(redis_server.url, INSTANCE, retry_base_s=0.0001, retry_max_s=0.0001)
    await bus.start()
    assert await bus.wait_connected(5.0)
    supervisor = bus._supervisor
    started = time.monotonic()
    await bus.close()
    assert time.monotonic() - started < CLOSE_TIMEOUT_S
    assert supervisor is not None and supervisor.done()
    assert not bus.connected
    await wait_until(lambda: redis_server.subscribers(wire.TOKEN_REVOKED_CHANNEL) == 0, what="connection closed")


@pytest.mark.gen_test(timeout=60)
async def test_gap_repair_reaches_a_listener_that_went_live_without_an_id(redis_server, expect_log):  # noqa: F811
    # Found by the soak (bench/soak.py): a stream that went live on a snapshot without an id
    # (read while Redis could not answer) has no position; when the relay then reconnected,
    # gap repair skipped the run if no listener had an id, and what was published meanwhile
    # never reached the stream. It now repairs from the newest id delivered on this instance.
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ \(")
    bus = RedisBus(redis_server.url, INSTANCE, retry_base_s=4.0, retry_max_s=4.0)  # reconnects 2-4 s later
    hub = Hub(heartbeat_interval_s=30.0, max_listeners_per_run=10, max_writable_bytes=1 << 20, bus=bus)
    await bus.start()
    first, first_client = live_stream(hub)
    second_client = None
    try:
        assert await bus.wait_connected(5.0)
        assert await bus.wait_subscribed("RUN-1", 5.0)
        publisher = RunEventPublisher(redis_server.url, origin="worker_edges")
        before, _ = publisher.publish("RUN-1", "llm_token", {"token": "before"})
        expected_first = sse.data_frame(b'{"type":"llm_token","token":"before"}', before)
        assert await read_exactly(first_client, len(expected_first)) == expected_first
        second, second_client = live_stream(hub)  # no id: as if its snapshot had none
        first.close("client_gone")
        with redis_server.client() as admin:
            admin.client_kill_filter(_type="pubsub")  # the relay's session ends; it waits 2-4 s
        await wait_until(lambda: not bus.connected, what="the relay sees its subscriber gone")
        during, _ = publisher.publish("RUN-1", "llm_token", {"token": "while the relay was away"})
        publisher.close()
        assert await bus.wait_connected(10.0)
        expected = sse.data_frame(b'{"type":"llm_token","token":"while the relay was away"}', during)
        assert await read_exactly(second_client, len(expected)) == expected
        second.close("done")
    finally:
        await bus.close()
        first_client.close()
        if second_client is not None:
            second_client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_script_redis_refuses_goes_back_alone_and_the_ones_it_ran_are_not_published_again(
        redis_server, expect_log):  # noqa: F811
    # Found by the soak: a Redis loading its append-only file after a restart refused some
    # scripts of a pipelined batch and ran the rest; the whole batch went back to the outbox,
    # so the events it had run were in history, and on every other instance, twice.
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ \(ResponseError: WRONGTYPE")
    with redis_server.client() as admin:
        admin.set("sentri:events:RUN-BAD", "not a stream")  # its script fails: WRONGTYPE
    bus = RedisBus(redis_server.url, INSTANCE, retry_max_s=0.2)
    Hub(heartbeat_interval_s=30.0, max_listeners_per_run=10, max_writable_bytes=1 << 20, bus=bus)
    await bus.start()
    try:
        assert await bus.wait_connected(5.0)
        ran = bus.publish_event("RUN-1", b'{"type":"llm_token","token":"ran"}', False)
        refused = bus.publish_event("RUN-BAD", b'{"type":"llm_token","token":"refused"}', False)
        ran_id = await asyncio.wait_for(ran, 10)
        assert ran_id is not None
        assert await asyncio.wait_for(refused, 10) is None  # delivered here at once, waiting in the outbox
        await wait_until(lambda: bus.connects >= 2, what="the relay reconnects after the refusal")
        with redis_server.client() as admin:
            admin.delete("sentri:events:RUN-BAD")
            await wait_until(lambda: admin.xlen("sentri:events:RUN-BAD") == 1, what="the refused one published")
            assert [entry_id.decode() for entry_id, _ in admin.xrange("sentri:events:RUN-1")] == [ran_id]
    finally:
        await bus.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_stream_that_registers_after_an_outage_event_was_delivered_here_gets_it_once_published(
        redis_server, expect_log):  # noqa: F811
    # Found by the soak: an event published while Redis was away reaches this instance's
    # streams at once, without an id; its echo is dropped when the outbox publishes it. A
    # stream that registered in between had neither. Stored events (a log) are in its snapshot.
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ \(")
    bus = RedisBus(redis_server.url, INSTANCE, retry_base_s=4.0, retry_max_s=4.0)  # reconnects 2-4 s later
    hub = Hub(heartbeat_interval_s=30.0, max_listeners_per_run=10, max_writable_bytes=1 << 20, bus=bus)
    await bus.start()
    early, early_client = live_stream(hub)
    late_client = None
    try:
        assert await bus.wait_connected(5.0)
        assert await bus.wait_subscribed("RUN-1", 5.0)
        with redis_server.client() as admin:
            admin.client_kill_filter(_type="pubsub")
        await wait_until(lambda: not bus.connected, what="the relay sees its subscriber gone")
        token = b'{"type":"llm_token","token":"in the outage"}'
        log = b'{"type":"log","message":"[2026-01-01T00:00:01.000Z] stored in the outage"}'
        assert await bus.publish_event("RUN-1", token, False) is None
        assert await bus.publish_event("RUN-1", log, False) is None
        assert await read_exactly(early_client, len(sse.data_frame(token) + sse.data_frame(log))) == (
            sse.data_frame(token) + sse.data_frame(log))
        late, late_client = live_stream(hub)  # live on a snapshot: it holds the stored log
        replayed = hub.reserve("RUN-1")  # live on a replay read before the outbox was published
        assert replayed is not None
        replayed_end, replayed_client = socket.socketpair()
        replayed_end.setblocking(False)
        replayed.attach_socket(replayed_end, False)
        hub.open(replayed, b"", replayed_through="1-1")
        assert await bus.wait_connected(10.0)
        with redis_server.client() as admin:
            await wait_until(lambda: admin.xlen("sentri:events:RUN-1") == 2, what="the outbox published")
            (token_id, _), (log_id, _) = admin.xrange("sentri:events:RUN-1")
        expected = sse.data_frame(token, token_id.decode())
        assert await read_exactly(late_client, len(expected)) == expected
        expected_replayed = expected + sse.data_frame(log, log_id.decode())
        assert await read_exactly(replayed_client, len(expected_replayed)) == expected_replayed
        replayed.close("done")
        replayed_client.close()
        late.send(Frame(b": end\n\n"))
        assert await read_exactly(late_client, 7) == b": end\n\n"  # nothing else came before it
        early.send(Frame(b": end\n\n"))
        assert await read_exactly(early_client, 7) == b": end\n\n"  # the early one: nothing again
        late.close("done")
    finally:
        await bus.close()
        early_client.close()
        if late_client is not None:
            late_client.close()


@pytest.mark.gen_test(timeout=60)
async def test_gap_repair_reaches_a_listener_without_an_id_on_a_run_nothing_was_delivered_for_here(
        redis_server, expect_log):  # noqa: F811
    # Found by the soak: such a stream (its snapshot read while Redis was away, on an instance
    # where its run had no other listener) missed a done published meanwhile and outlived its
    # run until its age bound. Repair starts shortly before it registered (Redis ids are times).
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ \(")
    bus = RedisBus(redis_server.url, INSTANCE, retry_base_s=4.0, retry_max_s=4.0)  # reconnects 2-4 s later
    hub = Hub(heartbeat_interval_s=30.0, max_listeners_per_run=10, max_writable_bytes=1 << 20, bus=bus)
    await bus.start()
    publisher = RunEventPublisher(redis_server.url, origin="worker_edges")
    stream, client = live_stream(hub)  # no id: as if its snapshot had none
    try:
        assert await bus.wait_connected(5.0)
        assert await bus.wait_subscribed("RUN-1", 5.0)
        with redis_server.client() as admin:
            admin.client_kill_filter(_type="pubsub")
        await wait_until(lambda: not bus.connected, what="the relay sees its subscriber gone")
        done_id, _ = publisher.publish("RUN-1", "done", {"status": "completed"})
        assert await bus.wait_connected(10.0)
        expected = sse.data_frame(b'{"type":"done","status":"completed"}', done_id)
        assert await read_exactly(client, len(expected) + 1) == expected  # then the end: the done ended it
        assert stream.closed
    finally:
        publisher.close()
        await bus.close()
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_stream_that_stopped_waiting_for_its_channel_is_caught_up_once_redis_confirms_it(
        redis_server):  # noqa: F811
    # Found by the soak: under load (a connect storm, a paused Redis) the wait for the run's
    # channel timed out and the stream went on; what was published after its history read and
    # before Redis took the SUBSCRIBE reached it neither live nor by any repair.
    bus = RedisBus(redis_server.url, INSTANCE)
    hub = Hub(heartbeat_interval_s=30.0, max_listeners_per_run=10, max_writable_bytes=1 << 20, bus=bus)
    await bus.start()
    publisher = RunEventPublisher(redis_server.url, origin="worker_edges")
    client = None
    try:
        assert await bus.wait_connected(5.0)
        read_through, _ = publisher.publish("RUN-1", "llm_token", {"token": "its history read ends here"})
        missed, _ = publisher.publish("RUN-1", "llm_token", {"token": "before its channel was confirmed"})
        stream = hub.reserve("RUN-1")
        assert stream is not None
        assert await bus.wait_subscribed("RUN-1", 0.0) is False  # it did not wait
        server_end, client = socket.socketpair()
        server_end.setblocking(False)
        stream.attach_socket(server_end, False)
        hub.open(stream, b"", snapshot_id=read_through)
        expected = sse.data_frame(b'{"type":"llm_token","token":"before its channel was confirmed"}', missed)
        assert await read_exactly(client, len(expected)) == expected
        after, _ = publisher.publish("RUN-1", "llm_token", {"token": "live"})
        expected = sse.data_frame(b'{"type":"llm_token","token":"live"}', after)
        assert await read_exactly(client, len(expected)) == expected
        stream.close("done")
    finally:
        publisher.close()
        await bus.close()
        if client is not None:
            client.close()



@contextlib.asynccontextmanager
async def relay_reconnecting_with_redis_frozen(bus, redis_server, monkeypatch):  # noqa: F811
    """The relay's subscriber is killed; its next session gets as far as its first subscribe,
    then Redis freezes (SIGSTOP) until the block ends: inside, a session is under way and the
    relay is not connected, as for a while after every reconnect under load."""
    sessions = []
    real_probe = relay.probe

    async def probe_then_freeze_redis(url, timeout_s):
        answer = await real_probe(url, timeout_s)
        redis_server.pause()
        sessions.append(url)
        return answer

    monkeypatch.setattr(relay, "probe", probe_then_freeze_redis)
    with redis_server.client() as admin:
        admin.client_kill_filter(_type="pubsub")
    try:
        await wait_until(lambda: sessions, what="the relay's next session under way, Redis frozen")
        monkeypatch.setattr(relay, "probe", real_probe)
        assert not bus.connected
        yield
    finally:
        redis_server.resume()


def open_at(hub, run_id, snapshot_id):
    """A stream registered now that goes live on a snapshot read through ``snapshot_id``."""
    stream = hub.reserve(run_id)
    assert stream is not None
    server_end, client_end = socket.socketpair()
    server_end.setblocking(False)
    stream.attach_socket(server_end, False)
    hub.open(stream, b"", snapshot_id=snapshot_id)
    return stream, client_end


def token_frame(token, event_id):
    return sse.data_frame(json.dumps({"type": "llm_token", "token": token}, separators=(",", ":")).encode(),
                          event_id)


@contextlib.asynccontextmanager
async def relay_with_a_gap(redis_server, run_id="RUN-1"):  # noqa: F811
    """A connected relay (reconnecting 50 ms after a loss) with its hub, a worker publisher, and
    two events of the run in history: ``read_through``, where a stream's history read ends, and
    ``missed``, published after it, which only a repair can bring that stream."""
    bus = RedisBus(redis_server.url, INSTANCE, retry_base_s=0.05, retry_max_s=0.05)
    hub = Hub(heartbeat_interval_s=30.0, max_listeners_per_run=10, max_writable_bytes=1 << 20, bus=bus)
    await bus.start()
    publisher = RunEventPublisher(redis_server.url, origin="worker_edges")
    try:
        assert await bus.wait_connected(5.0)
        read_through, _ = publisher.publish(run_id, "llm_token", {"token": "its history read ends here"})
        missed, _ = publisher.publish(run_id, "llm_token", {"token": "before its channel was confirmed"})
        yield types.SimpleNamespace(bus=bus, hub=hub, publisher=publisher, read_through=read_through,
                                    missed=missed, expected=token_frame("before its channel was confirmed", missed))
    finally:
        publisher.close()
        await bus.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_stream_that_came_while_the_relay_was_reconnecting_is_caught_up_once_redis_confirms_its_channel(
        redis_server, monkeypatch, expect_log):  # noqa: F811
    # Found by the soak: a stream registered after a reconnecting session had listed the runs
    # to repair, and before Redis answered its first subscribe, did not wait (the relay was not
    # connected) and was in no repair: what was published after its history read and before
    # Redis took its SUBSCRIBE never reached it.
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ \(")
    client = None
    async with relay_with_a_gap(redis_server) as relay_:
        try:
            async with relay_reconnecting_with_redis_frozen(relay_.bus, redis_server, monkeypatch):
                stream, client = open_at(relay_.hub, "RUN-1", relay_.read_through)
                assert await relay_.bus.wait_subscribed("RUN-1", 5.0) is False  # not connected: no wait
            assert await read_exactly(client, len(relay_.expected)) == relay_.expected
            after, _ = relay_.publisher.publish("RUN-1", "llm_token", {"token": "live"})
            expected = token_frame("live", after)
            assert await read_exactly(client, len(expected)) == expected
            stream.close("done")
        finally:
            if client is not None:
                client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_run_confirmed_late_during_a_reconnects_repair_gets_its_own_repair_before_its_live_frames(
        redis_server, monkeypatch, expect_log):  # noqa: F811
    # The reconnect's repair used to release every run still held when it ended, a run confirmed
    # late meanwhile included: its stream took the newer live frame first, then refused the
    # older ones its own repair brought (a stream never goes back in ids).
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ \(")
    clients = []
    async with relay_with_a_gap(redis_server, "RUN-B") as relay_:
        bus, hub = relay_.bus, relay_.hub
        try:
            early, early_client = live_stream(hub, "RUN-A")  # RUN-A is repaired by the reconnect
            clients.append(early_client)
            assert await bus.wait_subscribed("RUN-A", 5.0)
            reconnect_repair_began, reconnect_repair_may_end = asyncio.Event(), asyncio.Event()
            real_repair = bus._repair_from_history

            async def repair_held_back(runs, read_streams):
                if runs == ["RUN-A"]:  # the reconnect's: it ends once RUN-B's live frame is held
                    reconnect_repair_began.set()
                    await reconnect_repair_may_end.wait()
                await real_repair(runs, read_streams)

            monkeypatch.setattr(bus, "_repair_from_history", repair_held_back)
            with redis_server.client() as admin:
                admin.client_kill_filter(_type="pubsub")
            await asyncio.wait_for(reconnect_repair_began.wait(), 10.0)
            late, late_client = open_at(hub, "RUN-B", relay_.read_through)
            clients.append(late_client)
            assert await bus.wait_subscribed("RUN-B", 0.0) is False  # it did not wait
            await wait_until(lambda: "sentri:run:RUN-B" in bus._confirmed, what="RUN-B confirmed")
            live, _ = relay_.publisher.publish("RUN-B", "llm_token", {"token": "live"})
            await wait_until(lambda: bus._catching_up.get("RUN-B"), what="the live frame held")
            reconnect_repair_may_end.set()
            expected = relay_.expected + token_frame("live", live)
            assert await read_exactly(late_client, len(expected)) == expected
            early.close("done")
            late.close("done")
        finally:
            for client in clients:
                client.close()


@pytest.mark.gen_test(timeout=60)
async def test_an_outage_event_reaches_a_stream_that_came_after_it_in_id_order_when_its_run_is_held(
        redis_server, monkeypatch, expect_log):  # noqa: F811
    # An event published here while Redis was away goes to Redis when it is back; streams that
    # came after it was delivered here get it then, with its id. When their run was held for a
    # repair just then (its channel confirmed during the publish), they got it before the
    # repair's older events, and then refused those (found reading the soak's losses).
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ \(")
    client = None
    async with relay_with_a_gap(redis_server) as relay_:
        bus = relay_.bus
        try:
            async with relay_reconnecting_with_redis_frozen(bus, redis_server, monkeypatch):
                answer = bus.publish_event("RUN-1", b'{"type":"llm_token","token":"kept here"}', False)
                assert await answer is None  # answered without an id, kept for Redis
                stream, client = open_at(relay_.hub, "RUN-1", relay_.read_through)
                assert await bus.wait_subscribed("RUN-1", 5.0) is False
            await wait_until(lambda: bus.published == 1, what="the kept event published")
            with redis_server.client() as admin:
                (kept_id, _), = admin.xrevrange(stream_key("RUN-1"), count=1)
            expected = relay_.expected + token_frame("kept here", kept_id.decode())
            assert await read_exactly(client, len(expected)) == expected
            stream.close("done")
        finally:
            if client is not None:
                client.close()


def publish_replies_read_after(monkeypatch, meanwhile):
    """The outbox's pipeline replies are taken only once ``meanwhile()`` has run: as when another
    instance's message reaches this one's subscriber before its own publish is answered (two
    sockets, no order between them)."""
    real_pipeline = relay.released_pipeline

    @contextlib.asynccontextmanager
    async def pipeline_answering_late(client, transaction):
        async with real_pipeline(client, transaction=transaction) as pipe:
            real_execute = pipe.execute

            async def execute(raise_on_error=True):
                results = await real_execute(raise_on_error=raise_on_error)
                if not raise_on_error:  # the outbox's publishes (repair reads raise on error)
                    await meanwhile()
                return results

            pipe.execute = execute
            yield pipe

    monkeypatch.setattr(relay, "released_pipeline", pipeline_answering_late)


@contextlib.asynccontextmanager
async def an_outage_event_and_a_stream_that_came_after_it(relay_, redis_server, monkeypatch, kept,  # noqa: F811
                                                           before_reconnect):
    """A stream live on RUN-1 since before an outage (its run is repaired by the reconnect, then
    released); while the relay reconnects with Redis frozen, ``kept`` is published here (that
    stream has it at once, without an id) and a second stream registers; ``before_reconnect()``
    runs last in the outage. Yields the second stream's client end once ``kept`` is published."""
    bus, hub = relay_.bus, relay_.hub
    streams, clients = [], []
    try:
        before, before_client = open_at(hub, "RUN-1", relay_.missed)
        streams.append(before)
        clients.append(before_client)
        assert await bus.wait_subscribed("RUN-1", 5.0)
        async with relay_reconnecting_with_redis_frozen(bus, redis_server, monkeypatch):
            assert await bus.publish_event("RUN-1", kept, False) is None  # kept for Redis
            came_after, came_after_client = open_at(hub, "RUN-1", relay_.read_through)
            streams.append(came_after)
            clients.append(came_after_client)
            before_reconnect()
        await wait_until(lambda: bus.published == 1, what="the kept event published")
        yield came_after_client
    finally:
        for stream in streams:
            stream.close("done")
        for client in clients:
            client.close()


def id_after_missed(redis_server, relay_):  # noqa: F811
    """The id Redis gave the first event published after ``relay_.missed``."""
    with redis_server.client() as admin:
        (event_id, _), = admin.xrange(stream_key("RUN-1"), "(" + relay_.missed, "+", count=1)
    return event_id.decode()


@pytest.mark.gen_test(timeout=60)
async def test_an_outage_event_reaches_a_stream_that_came_after_it_before_what_was_published_after_it(
        redis_server, monkeypatch, expect_log):  # noqa: F811
    # Found by the soak (its losses at the end of every Redis pause): an event published here
    # while Redis was away went to the streams that came after it only once its publish was
    # answered; another instance's event published just after it had reached them first, over
    # the subscriber's socket, and a stream refuses an id older than the newest it has.
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ \(")
    published_after = []
    # A \u escape: its echo comes back re-encoded, so not byte for byte what was kept.
    kept = b'{"type":"llm_token","token":"kept h\\u00e9re"}'
    async with relay_with_a_gap(redis_server) as relay_:
        async def another_instance_publishes_meanwhile():
            if not published_after:
                event_id, _ = relay_.publisher.publish("RUN-1", "llm_token", {"token": "published after"})
                published_after.append(event_id)
                await wait_until(lambda: relay_.hub.newest_id("RUN-1") == event_id, what="its message delivered")

        async with an_outage_event_and_a_stream_that_came_after_it(
                relay_, redis_server, monkeypatch, kept,
                lambda: publish_replies_read_after(monkeypatch, another_instance_publishes_meanwhile)) as client:
            expected = (relay_.expected + sse.data_frame(kept, id_after_missed(redis_server, relay_))
                        + token_frame("published after", published_after[0]))
            assert await read_exactly(client, len(expected)) == expected


@pytest.mark.gen_test(timeout=60)
async def test_an_outage_event_whose_echo_is_lost_with_the_connection_still_reaches_the_streams_that_came_after_it(
        redis_server, monkeypatch, expect_log):  # noqa: F811
    # Redis answered the publish, so the event is not sent again; its echo, which was to bring
    # it to those streams, went down with the subscriber's connection (dropped here: a real
    # connection cannot be made to lose exactly that message).
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ \(")
    async with relay_with_a_gap(redis_server) as relay_:
        bus = relay_.bus
        real_on_message = bus._on_run_message

        def echo_lost(channel, data, classic_on_cluster=False):
            if not data.endswith(b'|local"}'):
                real_on_message(channel, data, classic_on_cluster)

        async with an_outage_event_and_a_stream_that_came_after_it(
                relay_, redis_server, monkeypatch, b'{"type":"llm_token","token":"kept here"}',
                lambda: monkeypatch.setattr(bus, "_on_run_message", echo_lost)) as client:
            assert bus._echoes_due  # answered, its echo awaited
            connects = bus.connects
            with redis_server.client() as admin:
                admin.client_kill_filter(_type="pubsub")
            await wait_until(lambda: bus.connects > connects, what="the relay back")
            expected = relay_.expected + token_frame("kept here", id_after_missed(redis_server, relay_))
            assert await read_exactly(client, len(expected)) == expected
