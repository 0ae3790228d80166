"""POST /api/v1/runs/{runId}/events: every error with its exact body, and what a publish does."""

from __future__ import annotations

import datetime
import json

import pytest

from sentri.models import Run, RunLog
from sentri.writes import iso_now

from .sseclient import open_request

PUBLISH_TOKEN = "publish-secret-0123456789"
PATH = "/api/v1/runs/RUN-1/events"


@pytest.fixture
def settings(settings):
    return settings.replace(publish_token=PUBLISH_TOKEN, publish_max_bytes=1024, retry_ms=0)


async def post(port, body, token=PUBLISH_TOKEN, path=PATH, headers=None):
    all_headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    all_headers.update(headers or {})
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await open_request(port, path, method="POST", headers=all_headers, body=raw)
    return response.status, await response.read_json()


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "token, status, error",
    [(None, 401, "publish token required"), ("", 401, "publish token required"),
     ("wrong-token", 401, "invalid publish token"), (PUBLISH_TOKEN + "x", 401, "invalid publish token")],
)
async def test_a_missing_or_wrong_token_is_401(port, world, token, status, error):
    assert await post(port, {"type": "log", "message": "x"}, token=token) == (status, {"error": error})


@pytest.mark.gen_test
async def test_without_a_configured_token_the_endpoint_is_404(port, world, context):
    context.settings = context.settings.replace(publish_token="")
    assert await post(port, {"type": "log", "message": "x"}) == (404, {"error": "not found"})


@pytest.mark.gen_test
async def test_a_declared_oversized_body_is_413_before_it_is_read(port, world):
    response = await open_request(port, PATH, method="POST", raw_request=(
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PUBLISH_TOKEN}\r\n"
        "Content-Length: 5000000\r\n\r\n").encode())
    assert response.status == 413
    assert await response.read_json() == {"error": "request body too large", "maxBytes": 1024}


@pytest.mark.gen_test
async def test_a_chunked_body_growing_past_the_bound_is_refused(port, world):
    piece = b"x" * 600
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(3)) + b"0\r\n\r\n"
    response = await open_request(port, PATH, raw_request=(
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PUBLISH_TOKEN}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks)
    assert response.status in (400, 413)  # Tornado cuts the connection's body at the bound


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "body, error",
    [(b"{not json", "body is not valid JSON"), (b"\xff\xfe", "body is not valid JSON"), (b"", "body is not valid JSON"),
     (b"null", "body must be a JSON object"), (b'"log"', "body must be a JSON object"),
     (b'{"message":"no type"}', "type must be a short lowercase word (a-z, 0-9, _; at most 32 characters)"),
     (b'{"type":"Log"}', "type must be a short lowercase word (a-z, 0-9, _; at most 32 characters)"),
     (b'{"type":"log\\nid: 1"}', "type must be a short lowercase word (a-z, 0-9, _; at most 32 characters)"),
     (b'{"type":"' + b"a" * 33 + b'"}', "type must be a short lowercase word (a-z, 0-9, _; at most 32 characters)"),
     (b'{"type":"log"}', "a log event needs a string message"),
     (b'{"type":"log","message":"x","level":"fatal"}', "level must be one of: info, warn, error"),
     (b'{"type":"done","status":"running"}',
      "a done event needs a status: completed, completed_empty, failed, aborted, interrupted")],
)
async def test_a_bad_body_is_400_with_its_reason(port, world, body, error):
    assert await post(port, body) == (400, {"error": error})


@pytest.mark.gen_test
async def test_an_unknown_or_deleted_run_is_404(port, world, rows):
    rows.run(world.project, id="RUN-GONE", deletedAt="2026-01-02T00:00:00.000Z")
    for run_id in ("RUN-404", "RUN-GONE"):
        status, body = await post(port, {"type": "llm_token", "token": "x"}, path=f"/api/v1/runs/{run_id}/events")
        assert (status, body) == (404, {"error": "run not found"})


@pytest.mark.gen_test
async def test_a_published_event_reaches_listeners_with_the_id_the_answer_gives(port, world, context):
    stream = await open_request(port, world.events_path())
    assert (await stream.next_event())["type"] == "snapshot"
    status, body = await post(port, {"type": "llm_token", "ts": 123, "token": "héllo", "_origin": "x"})
    assert status == 202 and set(body) == {"id"}
    assert await stream.next_frame() == (
        b'id: %s\ndata: {"type":"llm_token","ts":123,"token":"h\xc3\xa9llo"}\n\n' % body["id"].encode())


@pytest.mark.gen_test
async def test_a_published_log_is_stored_before_it_is_streamed_and_a_later_snapshot_holds_it(port, world, context):
    stream = await open_request(port, world.events_path())
    await stream.next_event()
    status, body = await post(port, {"type": "log", "message": "step one", "level": "warn"})
    assert status == 202
    frame = await stream.next_frame()
    event = json.loads(frame.split(b"data: ", 1)[1])
    assert set(event) == {"type", "message"} and event["message"].endswith("] step one")
    with context.store.database.connection_context():
        stored = list(RunLog.select(RunLog.seq, RunLog.level, RunLog.message).where(RunLog.runId == "RUN-1").tuples())
    assert stored == [(1, "warn", event["message"])]
    later = await open_request(port, world.events_path())
    assert (await later.next_event())["run"]["logs"] == [event["message"]]


@pytest.mark.gen_test
async def test_a_stamped_log_message_is_kept_as_is(port, world, context):
    await post(port, {"type": "log", "message": "[2026-01-01T00:00:00.000Z] ready"})
    with context.store.database.connection_context():
        assert RunLog.select(RunLog.message).scalar() == "[2026-01-01T00:00:00.000Z] ready"


@pytest.mark.gen_test
async def test_a_published_done_updates_the_run_row_and_ends_the_streams(port, world, context):
    with context.store.database.connection_context():  # started a minute ago: a real duration
        Run.update(startedAt=iso_now(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1))
                   ).where(Run.id == "RUN-1").execute()
    stream = await open_request(port, world.events_path())
    await stream.next_event()
    status, body = await post(port, {"type": "done", "status": "failed", "passed": 2, "failed": 1, "total": 3})
    assert status == 202
    assert await stream.next_frame() == (
        b'id: %s\ndata: {"type":"done","status":"failed","passed":2,"failed":1,"total":3}\n\n' % body["id"].encode())
    assert await stream.server_closed()
    with context.store.database.connection_context():
        row = Run.select(Run.status, Run.passed, Run.failed, Run.total, Run.finishedAt, Run.duration).where(
            Run.id == "RUN-1").dicts().first()
    assert (row["status"], row["passed"], row["failed"], row["total"]) == ("failed", 2, 1, 3)
    assert row["finishedAt"] and 60_000 <= row["duration"] < 120_000
