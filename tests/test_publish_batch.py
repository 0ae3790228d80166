"""Batch publishing: many events in one POST (a JSON array or NDJSON), ids in order; one bad
event refuses the whole batch, naming its index, and nothing of it is stored or delivered."""

from __future__ import annotations

import json

import pytest

from sentri.models import Run, RunLog

from .sseclient import open_request

PUBLISH_TOKEN = "publish-secret-0123456789"
PATH = "/api/v1/runs/RUN-1/events"
NDJSON = {"Content-Type": "application/x-ndjson"}
TYPE_WORD = "type must be a short lowercase word (a-z, 0-9, _; at most 32 characters)"


@pytest.fixture
def settings(settings):
    return settings.replace(publish_token=PUBLISH_TOKEN, publish_max_bytes=64 * 1024, publish_max_events=50,
                            publish_max_event_bytes=2048, retry_ms=0)


async def post(port, raw, headers=None):
    all_headers = {"Authorization": f"Bearer {PUBLISH_TOKEN}", **(headers or {})}
    response = await open_request(port, PATH, method="POST", headers=all_headers, body=raw)
    return response.status, await response.read_json()


def as_array(events):
    return json.dumps(events).encode()


def as_ndjson(events):
    return b"".join(json.dumps(event).encode() + b"\n" for event in events)


ENCODINGS = [pytest.param(as_array, {}, id="array"), pytest.param(as_ndjson, NDJSON, id="ndjson")]


def stored_logs(context):
    with context.store.database.connection_context():
        return list(RunLog.select(RunLog.seq, RunLog.level, RunLog.message).where(RunLog.runId == "RUN-1")
                    .order_by(RunLog.seq).tuples())


@pytest.mark.gen_test
@pytest.mark.parametrize("encode, headers", ENCODINGS)
async def test_a_batch_is_stored_and_delivered_in_order_with_its_ids(port, world, context, encode, headers):
    stream = await open_request(port, world.events_path())
    assert (await stream.next_event())["type"] == "snapshot"
    events = [{"type": "log", "message": f"line {n}", "level": "warn" if n == 2 else "info"} for n in range(5)]
    events.insert(3, {"type": "llm_token", "token": "t"})
    status, body = await post(port, encode(events), headers)
    assert status == 202 and set(body) == {"ids"} and len(body["ids"]) == 6
    received = []
    for _ in range(6):
        frame = await stream.next_frame()
        received.append((frame.split(b"\n", 1)[0][len(b"id: "):].decode(), json.loads(frame.split(b"data: ", 1)[1])))
    assert [event_id for event_id, _ in received] == body["ids"]
    assert [event["type"] for _, event in received] == ["log", "log", "log", "llm_token", "log", "log"]
    logs = stored_logs(context)
    assert [(seq, level) for seq, level, _ in logs] == [(1, "info"), (2, "info"), (3, "warn"), (4, "info"),
                                                        (5, "info")]
    assert [message for _, _, message in logs] == [event["message"] for _, event in received if event["type"] == "log"]


@pytest.mark.gen_test
async def test_a_single_object_still_answers_one_id(port, world, context):
    status, body = await post(port, json.dumps({"type": "log", "message": "one"}).encode())
    assert status == 202 and set(body) == {"id"}


@pytest.mark.gen_test
async def test_a_batch_ending_in_done_records_the_run_after_its_lines_and_ends_the_stream(port, world, context):
    stream = await open_request(port, world.events_path())
    await stream.next_event()
    status, _ = await post(port, as_array([{"type": "log", "message": "last words"},
                                          {"type": "done", "status": "completed", "total": 1}]))
    assert status == 202
    assert (await stream.next_event())["type"] == "log"
    assert (await stream.next_event())["type"] == "done"
    assert await stream.server_closed()
    with context.store.database.connection_context():
        assert Run.select(Run.status, Run.total).where(Run.id == "RUN-1").tuples().first() == ("completed", 1)
    assert len(stored_logs(context)) == 1


BAD_EVENTS = [
    (b"{not json", 400, "body is not valid JSON"),
    (b"[1]", 400, "an event must be a JSON object"),
    (b'"log"', 400, "an event must be a JSON object"),
    (b'{"message":"no type"}', 400, TYPE_WORD),
    (b'{"type":"Log"}', 400, TYPE_WORD),
    (b'{"type":"log\\nid: 1"}', 400, TYPE_WORD),
    (b'{"type":"log"}', 400, "a log event needs a string message"),
    (b'{"type":"log","message":"x","level":"fatal"}', 400, "level must be one of: info, warn, error"),
    (b'{"type":"done","status":"running"}', 400,
     "a done event needs a status: completed, completed_empty, failed, aborted, interrupted"),
    (b'{"type":"agent_event","step":-1}', 400, "an agent_event needs step: an integer from 0 to 2147483647"),
    (b'{"type":"frame","image":"' + b"A" * 3000 + b'"}', 413, "event too large"),
]


# Inside an array a line that is not JSON makes the whole body invalid JSON, without an index
# (the next test); only NDJSON can name the bad line.
BAD_BATCHES = [pytest.param(*encoding.values, bad, status, error, id=f"{encoding.id}-{number}")
               for encoding in ENCODINGS for number, (bad, status, error) in enumerate(BAD_EVENTS)
               if not (encoding.values[0] is as_array and bad == b"{not json")]


@pytest.mark.gen_test
@pytest.mark.parametrize("encode, headers, bad, status, error", BAD_BATCHES)
async def test_one_bad_event_refuses_the_whole_batch_naming_its_index(port, world, context, encode, headers,
                                                                       bad, status, error):
    stream = await open_request(port, world.events_path())
    await stream.next_event()
    good = [json.dumps({"type": "log", "message": f"good {n}"}).encode() for n in range(4)]
    items = good[:2] + [bad] + good[2:]
    raw = (b"[" + b",".join(items) + b"]") if encode is as_array else b"\n".join(items)
    answer_status, body = await post(port, raw, headers)
    assert answer_status == status
    assert body["error"] == error and body["index"] == 2
    assert stored_logs(context) == []
    # Nothing of the refused batch was delivered: the next frame is the next good publish.
    assert (await post(port, json.dumps({"type": "llm_token", "token": "after"}).encode()))[0] == 202
    assert (await stream.next_event())["token"] == "after"


@pytest.mark.gen_test
async def test_a_batch_that_is_not_json_is_400_without_an_index(port, world, context):
    assert await post(port, b'[{"type":"log","message":"x"}, {oops]') == (400, {"error": "body is not valid JSON"})
    assert stored_logs(context) == []


@pytest.mark.gen_test
@pytest.mark.parametrize("encode, headers", ENCODINGS)
async def test_an_empty_batch_is_400_and_too_many_events_413(port, world, context, encode, headers):
    assert await post(port, encode([]), headers) == (400, {"error": "a batch needs at least one event"})
    too_many = [{"type": "llm_token", "token": "t"}] * 51
    assert await post(port, encode(too_many), headers) == (
        413, {"error": "too many events in one request", "maxEvents": 50})


@pytest.mark.gen_test
async def test_a_batch_for_an_unknown_run_is_404_and_stores_nothing(port, world, context):
    response = await open_request(port, "/api/v1/runs/RUN-NONE/events", method="POST",
                                  headers={"Authorization": f"Bearer {PUBLISH_TOKEN}"},
                                  body=as_array([{"type": "log", "message": "x"}]))
    assert response.status == 404
    with context.store.database.connection_context():
        assert RunLog.select().count() == 0
