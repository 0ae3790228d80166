"""JSON nested 100,000 levels deep, wherever bytes from outside are parsed, takes that place's
ordinary error path, never a 500: the publish API answers 400, the relay and history ignore
it (counted, one warning), a JSON column takes its default, a token is refused, ``sentri
emit`` exits 2, and no publisher sends an event nested deeper than the instances read."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from sentri import sse
from sentri.bus import messages as wire
from sentri.bus.redis import RedisBus
from sentri.cli import emit_event
from sentri.config import SettingsError
from sentri.event_intake import InvalidEventError
from sentri.models import RunLog
from sentri.tokens import verify
from sentri.worker_publisher import RunEventPublisher

from .conftest import JWT_SECRET
from .console import sentri_emit
from .frames import next_data, open_live
from .redis_server import redis_server  # noqa: F401 (fixture)
from .services import wait_until
from .sseclient import open_request
from .test_jsontext import DEPTH, SHAPES, nested_lists
from .test_publish_api import PUBLISH_TOKEN, post
from .test_redis_ids import next_event
from .test_snapshot import first_frame, run_of

TOO_DEEP_BODY = {"error": "body must not nest arrays and objects more than 64 levels deep"}
TOO_DEEP_EVENT = "an event must not nest arrays and objects more than 64 levels deep"
AUTH_REQUIRED = b'{"error":"Authentication required."}'
CHANNEL = "sentri:run:RUN-1"
STREAM = "sentri:events:RUN-1"
ONE_WARNING = r"\Aignored a {} nested deeper than 64 levels \(logged once; later ones are only counted\)\Z"


def deep_event(shape: str, depth: int = DEPTH, event_type: str = "llm_token") -> str:
    """An event whose ``token`` holds ``depth`` levels: the event itself is one more."""
    return '{"type":"' + event_type + '","message":"deep","token":' + SHAPES[shape](depth) + "}"


class TestThePublishApi:
    @pytest.fixture
    def settings(self, settings):
        return settings.replace(publish_token=PUBLISH_TOKEN, publish_max_bytes=1 << 20, retry_ms=0)

    @pytest.mark.gen_test(timeout=60)
    @pytest.mark.parametrize("shape", SHAPES)
    @pytest.mark.parametrize("where", ["the whole body", "a log event's field"])
    async def test_a_body_nested_100000_levels_deep_is_400_naming_the_limit_and_nothing_is_stored_or_delivered(
            self, port, world, context, shape, where):
        stream = await open_live(port, world)
        body = SHAPES[shape](DEPTH) if where == "the whole body" else deep_event(shape, event_type="log")
        assert await post(port, body.encode()) == (400, TOO_DEEP_BODY)
        status, _ = await post(port, {"type": "llm_token", "token": "next"})
        assert status == 202
        assert await next_data(stream) == b'data: {"type":"llm_token","token":"next"}\n\n'  # not the deep one
        with context.store.database.connection_context():
            assert RunLog.select().count() == 0

    @pytest.mark.gen_test(timeout=30)
    @pytest.mark.parametrize("shape", SHAPES)
    @pytest.mark.parametrize("depth", [64, 500, 5_000])
    async def test_an_event_one_level_past_the_limit_or_thousands_past_it_is_400(self, port, world, shape, depth):
        # The event object is the first level: its field holding ``depth`` levels makes depth + 1.
        assert await post(port, deep_event(shape, depth).encode()) == (400, TOO_DEEP_BODY)

    @pytest.mark.gen_test(timeout=30)
    @pytest.mark.parametrize("shape", SHAPES)
    async def test_an_event_exactly_64_levels_deep_is_published_and_delivered_byte_for_byte(
            self, port, world, shape):
        stream = await open_live(port, world)
        body = deep_event(shape, 63)
        status, _ = await post(port, body.encode())
        assert status == 202
        assert await next_data(stream) == b"data: " + body.encode() + b"\n\n"


class TestPublishersInProcess:
    @pytest.mark.gen_test(timeout=30)
    async def test_the_servers_publisher_refuses_a_python_payload_deeper_than_the_limit(self, world, context):
        with pytest.raises(InvalidEventError, match=rf"\A{TOO_DEEP_EVENT}\Z"):
            await context.publisher.publish("RUN-1", "llm_token", {"token": nested_lists(DEPTH)})
        with context.store.database.connection_context():
            assert RunLog.select().count() == 0

    def test_a_worker_refuses_an_event_deeper_than_the_limit_and_publishes_nothing(self, redis_server):  # noqa: F811
        client = redis_server.client()
        publisher = RunEventPublisher(redis_server.url, origin="worker_deep")
        try:
            with pytest.raises(InvalidEventError, match=rf"\A{TOO_DEEP_EVENT}\Z"):
                publisher.emit("RUN-9", "llm_token", {"token": nested_lists(DEPTH)})
            assert client.exists("sentri:events:RUN-9") == 0
            assert publisher.emit("RUN-9", "llm_token", {"token": nested_lists(63)}) == 0  # 64 levels: sent
            assert client.xlen("sentri:events:RUN-9") == 1
        finally:
            publisher.close()
            client.close()

    @pytest.mark.parametrize("shape", SHAPES)
    def test_sentri_emit_refuses_a_payload_100000_levels_deep_as_bad_input(
            self, settings, redis_server, shape):  # noqa: F811
        payload = '{"message":"x","extra":' + SHAPES[shape](DEPTH) + "}"
        with pytest.raises(SettingsError,
                           match=r"\AJSON: the payload must not nest arrays and objects more than 64 levels deep\Z"):
            emit_event(settings.replace(redis_url=redis_server.url), "RUN-9", "log", payload)
        assert redis_server.client().exists("sentri:events:RUN-9") == 0

    @pytest.mark.parametrize("shape", SHAPES)
    def test_the_command_line_says_so_in_one_line_with_status_2(self, redis_server, shape):  # noqa: F811
        # As deep as one argument may be (Linux takes at most 128 KiB per argument).
        depth = {"arrays": 60_000, "objects": 20_000}[shape]
        result = sentri_emit("RUN-9", "log", '{"message":"x","extra":' + SHAPES[shape](depth) + "}",
                         redis_url=redis_server.url)
        assert (result.returncode, result.stdout, result.stderr) == (
            2, b"", b"sentri: JSON: the payload must not nest arrays and objects more than 64 levels deep\n")
        assert redis_server.client().exists("sentri:events:RUN-9") == 0


class TestTheRelay:
    @pytest.fixture
    def settings(self, settings, redis_server):  # noqa: F811
        return settings.replace(redis_url=redis_server.url, relay_retry_max_s=0.2, retry_ms=0)

    @pytest.mark.gen_test(timeout=60)
    @pytest.mark.parametrize("shape", SHAPES)
    async def test_relay_messages_nested_100000_levels_deep_are_ignored_counted_and_logged_once_and_the_next_arrives(
            self, port, context, world, redis_server, expect_log, shape):  # noqa: F811
        stream = await open_live(port, world)
        ignored = context.bus.ignored
        deep = (deep_event(shape)[:-1] + ',"_origin":"node_1"}').encode()
        with expect_log("sentri.relay", ONE_WARNING.format("message from redis")) as warning:
            for _ in range(3):
                assert redis_server.publish(CHANNEL, deep) == 1
            assert redis_server.publish(CHANNEL, b'{"type":"llm_token","token":"next","_origin":"node_1"}') == 1
            assert await next_data(stream) == b'data: {"type":"llm_token","token":"next"}\n\n'
        assert context.bus.ignored - ignored == 3
        assert warning.matched == 1
        assert context.bus.connected  # the relay kept its connection: no error, no reconnect

    @pytest.mark.gen_test(timeout=60)
    @pytest.mark.parametrize("shape", SHAPES)
    async def test_history_entries_nested_100000_levels_deep_are_not_replayed_on_resume(
            self, port, context, world, redis_server, expect_log, shape):  # noqa: F811
        assert await context.bus.wait_connected(5.0)
        on_a = await open_live(port, world)
        before = await context.hub.publish("RUN-1", "llm_token", {"token": "before"})
        assert await next_event(on_a) == (before, {"type": "llm_token", "token": "before"})
        on_a.close()
        client = redis_server.client()
        try:  # written by someone else than this project's publish script
            for _ in range(2):
                client.xadd(STREAM, {"d": deep_event(shape).encode(), "o": "intruder", "e": "0"})
            after = client.xadd(STREAM, {"d": b'{"type":"llm_token","token":"after"}', "o": "node_1", "e": "0"})
        finally:
            client.close()
        with expect_log("sentri.history", ONE_WARNING.format("history entry from redis")) as warning:
            resumed = await open_request(port, world.events_path(), headers={"Last-Event-ID": before})
            assert resumed.status == 200
            assert resumed.headers["sentri-resume"] == "replay"
            assert await next_event(resumed) == (after.decode(), {"type": "llm_token", "token": "after"})
        assert context.hub.history.too_deep.count == 2
        assert warning.matched == 1

    @pytest.mark.gen_test(timeout=60)
    @pytest.mark.parametrize("shape", SHAPES)
    async def test_history_entries_nested_100000_levels_deep_are_not_caught_up_after_a_reconnect(
            self, port, context, world, redis_server, expect_log, shape):  # noqa: F811
        expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ \(")
        assert await context.bus.wait_connected(5.0)
        on_a = await open_live(port, world)
        before = await context.hub.publish("RUN-1", "llm_token", {"token": "before"})
        assert await next_event(on_a) == (before, {"type": "llm_token", "token": "before"})
        ignored = context.bus.ignored
        # Synchronously, so the relay cannot reconnect in between: only gap repair can deliver.
        client = redis_server.client()
        publisher = RunEventPublisher(redis_server.url, origin="worker_gap")
        try:
            assert client.client_kill_filter(_type="pubsub") == 1
            client.xadd(STREAM, {"d": deep_event(shape).encode(), "o": "intruder", "e": "0"})
            gap, receivers = publisher.publish("RUN-1", "llm_token", {"token": "gap"})
            assert receivers == 0
        finally:
            publisher.close()
            client.close()
        with expect_log("sentri.relay", ONE_WARNING.format("message from redis")) as warning:
            assert await next_event(on_a) == (gap, {"type": "llm_token", "token": "gap"})
        assert context.bus.caught_up == 1
        assert context.bus.ignored - ignored == 1
        assert warning.matched == 1


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("shape", SHAPES)
async def test_revocation_notices_nested_100000_levels_deep_are_ignored_counted_and_logged_once(
        redis_server, expect_log, shape):  # noqa: F811
    bus = RedisBus(redis_server.url, "py_deep")
    notices = []
    bus.revocation_callbacks.append(lambda jti, expires: notices.append((jti, expires)))
    await bus.start()
    try:
        assert await bus.wait_connected(5.0)
        deep = ('{"jti":"j-deep","exp":1,"x":' + SHAPES[shape](DEPTH) + "}").encode()
        with expect_log("sentri.relay", ONE_WARNING.format("message from redis")) as warning:
            for data in (deep, deep, b'{"jti":"j-2","exp":1700000000}'):
                assert redis_server.publish(wire.TOKEN_REVOKED_CHANNEL, data) == 1
            await wait_until(lambda: bus.received == 3, what="all notices read")
        assert bus.ignored == 2
        assert warning.matched == 1
        assert notices == [("j-2", 1700000000)]
        assert bus.connected
    finally:
        await bus.close()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("shape", SHAPES)
async def test_json_columns_nested_100000_levels_deep_give_the_same_snapshot_as_invalid_json(
        port, world, rows, shape):
    columns = ("videoSegments", "tests", "results", "pages", "logs", "testQueue", "generateInput", "promptAudit",
               "pipelineStats", "feedbackLoop", "qualityAnalytics")
    rows.run(world.project, id="RUN-DEEP", **{column: SHAPES[shape](DEPTH) for column in columns})
    rows.run(world.project, id="RUN-BROKEN", **{column: "{not json" for column in columns})
    deep = run_of((await first_frame(port, world, "RUN-DEEP"))[1])
    broken = run_of((await first_frame(port, world, "RUN-BROKEN"))[1])
    assert {**deep, "id": "RUN-BROKEN"} == broken
    assert deep["results"] == [] and deep["testQueue"] is None


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("segment", ["header", "payload"])
async def test_a_token_with_a_deeply_nested_header_or_payload_gets_the_ordinary_401(port, world, shape, segment):
    # 4,000 levels: past json.loads' own bound, within the request header size limit.
    token = forged_token(segment, SHAPES[shape](4_000))
    response = await open_request(port, "/api/v1/runs/RUN-1/events", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 401
    await response.read_json()
    assert response.body == AUTH_REQUIRED


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("segment", ["header", "payload"])
def test_a_token_whose_header_or_payload_nests_100000_levels_is_not_valid(shape, segment):
    assert verify(forged_token(segment, SHAPES[shape](DEPTH)), JWT_SECRET) is None


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("segment", ["header", "payload"])
def test_a_token_nesting_one_level_past_the_bound_is_not_valid_on_any_python(shape, segment):
    # 64 levels with the segment's own object; every Python's parser reads this, the bound refuses it.
    assert verify(forged_token(segment, SHAPES[shape](63)), JWT_SECRET) is not None
    assert verify(forged_token(segment, SHAPES[shape](64)), JWT_SECRET) is None


def forged_token(segment: str, deep_json: str) -> str:
    """An HS256 token signed with the right secret whose header or payload holds ``deep_json``."""
    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    header = '{"alg":"HS256","typ":"JWT","x":' + deep_json + "}" if segment == "header" else \
        '{"alg":"HS256","typ":"JWT"}'
    payload = '{"sub":"USR-1","exp":9999999999,"x":' + deep_json + "}" if segment == "payload" else \
        '{"sub":"USR-1","exp":9999999999}'
    signing_input = b64url(header.encode()) + "." + b64url(payload.encode())
    signature = hmac.new(JWT_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_frame_nested_100000_levels_deep_has_no_log_message(shape):
    frame = sse.data_frame(deep_event(shape, event_type="log").encode())
    assert sse.log_message_of(frame) is None

