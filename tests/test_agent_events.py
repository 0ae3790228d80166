"""``agent_event``: checked, stored in ``run_agent_events`` (where a newer Node backend created
it) before it is fanned out, and in every later snapshot's ``agentEvents``; where the table does
not exist, fanned out only, and snapshots keep the older shape."""

from __future__ import annotations

import json
import re

import pytest

from sentri.models import RunAgentEvent

from .frames import next_data
from .lookups import open_racing_a_producer
from .redis_server import redis_server  # noqa: F401 (fixture)
from .schemas import NEWER, PROJECT
from .sseclient import open_request
from .test_publish_api import PUBLISH_TOKEN, post
from .test_worker_durable import emit, history

ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
FULL = {"type": "agent_event", "step": 2, "agent": "triage", "phase": "handoff", "message": "To the fixer \u2713",
        "data": {"testId": "TC-4", "score": 0.5, "tags": ["flaky"]}, "nextAgent": "fixer", "model": "gpt-x",
        "createdAt": "2026-01-01T00:00:02.000Z"}
FULL_JSON = ('{"type":"agent_event","step":2,"agent":"triage","phase":"handoff","message":"To the fixer \u2713",'
             '"data":{"testId":"TC-4","score":0.5,"tags":["flaky"]},"nextAgent":"fixer","model":"gpt-x",'
             '"createdAt":"2026-01-01T00:00:02.000Z"}').encode("utf-8")


@pytest.fixture
def schema():
    return NEWER


@pytest.fixture
def settings(settings):
    return settings.replace(publish_token=PUBLISH_TOKEN, publish_max_bytes=4096, retry_ms=0)


def stored_rows(context):
    fields = (RunAgentEvent.runId, RunAgentEvent.step, RunAgentEvent.agent, RunAgentEvent.phase,
              RunAgentEvent.message, RunAgentEvent.data, RunAgentEvent.nextAgent, RunAgentEvent.model,
              RunAgentEvent.createdAt)
    with context.store.database.connection_context():
        return list(RunAgentEvent.select(*fields).order_by(RunAgentEvent.id).tuples())


@pytest.mark.gen_test
async def test_a_published_agent_event_is_stored_then_delivered_byte_for_byte_and_in_later_snapshots(
        port, world, context):
    stream = await open_request(port, world.events_path())
    assert (await next_data(stream)).startswith(b'data: {"type":"snapshot"')
    status, body = await post(port, {**FULL, "_origin": "x"})
    assert status == 202
    assert await stream.next_frame() == b"id: " + body["id"].encode() + b"\ndata: " + FULL_JSON + b"\n\n"
    assert stored_rows(context) == [("RUN-1", 2, "triage", "handoff", "To the fixer \u2713",
                                     '{"testId":"TC-4","score":0.5,"tags":["flaky"]}', "fixer", "gpt-x",
                                     "2026-01-01T00:00:02.000Z")]
    later = await open_request(port, world.events_path())
    run = json.loads((await next_data(later))[6:])["run"]
    assert list(run)[-1] == "agentEvents"
    [event] = run["agentEvents"]
    assert isinstance(event.pop("id"), int)
    assert event == {"runId": "RUN-1", **{key: value for key, value in FULL.items() if key != "type"}}


@pytest.mark.gen_test
async def test_optional_fields_default_to_null_and_created_at_is_stamped_once_for_row_and_frame(
        port, world, context):
    stream = await open_request(port, world.events_path())
    await next_data(stream)
    status, _ = await post(port, {"type": "agent_event", "step": 0, "agent": "planner", "phase": "start",
                                  "message": "Planning"})
    assert status == 202
    event = json.loads((await next_data(stream))[6:])
    assert list(event) == ["type", "step", "agent", "phase", "message", "data", "nextAgent", "model", "createdAt"]
    assert ISO_TIME.fullmatch(event["createdAt"])
    assert (event["data"], event["nextAgent"], event["model"]) == (None, None, None)
    assert stored_rows(context) == [("RUN-1", 0, "planner", "start", "Planning", None, None, None,
                                     event["createdAt"])]


BAD_AGENT_EVENTS = [
    ({"agent": "a", "phase": "start", "message": "m"}, "an agent_event needs step: an integer from 0 to 2147483647"),
    ({"step": "1", "agent": "a", "phase": "start", "message": "m"},
     "an agent_event needs step: an integer from 0 to 2147483647"),
    ({"step": True, "agent": "a", "phase": "start", "message": "m"},
     "an agent_event needs step: an integer from 0 to 2147483647"),
    ({"step": 1.5, "agent": "a", "phase": "start", "message": "m"},
     "an agent_event needs step: an integer from 0 to 2147483647"),
    ({"step": 2**31, "agent": "a", "phase": "start", "message": "m"},
     "an agent_event needs step: an integer from 0 to 2147483647"),
    ({"step": 1, "phase": "start", "message": "m"}, "an agent_event needs agent: a string"),
    ({"step": 1, "agent": 7, "phase": "start", "message": "m"}, "an agent_event needs agent: a string"),
    ({"step": 1, "agent": "", "phase": "start", "message": "m"}, "an agent_event needs agent: a non-empty string"),
    ({"step": 1, "agent": "a", "phase": "start"}, "an agent_event needs message: a string"),
    ({"step": 1, "agent": "a", "phase": "start", "message": None}, "an agent_event needs message: a string"),
    ({"step": 1, "agent": "a", "phase": "finished", "message": "m"},
     "an agent_event needs phase: one of start, progress, finding, handoff, done"),
    ({"step": 1, "agent": "a", "message": "m"},
     "an agent_event needs phase: one of start, progress, finding, handoff, done"),
    ({"step": 1, "agent": "a", "phase": "done", "message": "m", "nextAgent": 3},
     "an agent_event's nextAgent must be a string or null"),
    ({"step": 1, "agent": "a", "phase": "done", "message": "m", "model": ["x"]},
     "an agent_event's model must be a string or null"),
    ({"step": 1, "agent": "a", "phase": "done", "message": "m", "createdAt": "yesterday"},
     "an agent_event's createdAt must be an ISO-8601 UTC time (2026-01-01T00:00:00.000Z) or left out"),
    ({"step": 1, "agent": "a", "phase": "done", "message": "m", "runId": "RUN-2", "extra": 1},
     "an agent_event has no field extra, runId; its fields are: "
     "step, agent, phase, message, data, nextAgent, model, createdAt"),
]


@pytest.mark.gen_test
@pytest.mark.parametrize("fields, error", BAD_AGENT_EVENTS)
async def test_an_invalid_agent_event_is_400_with_its_reason_and_neither_stored_nor_delivered(
        port, world, context, fields, error):
    stream = await open_request(port, world.events_path())
    await next_data(stream)
    assert await post(port, {"type": "agent_event", **fields}) == (400, {"error": error})
    assert stored_rows(context) == []
    context.hub.emit("RUN-1", "log", {"message": "next"})
    assert json.loads((await next_data(stream))[6:]) == {"type": "log", "message": "next"}


@pytest.mark.gen_test
async def test_the_400_body_is_compact_json(port, world):
    response = await open_request(port, "/api/v1/runs/RUN-1/events", method="POST",
                                  headers={"Authorization": f"Bearer {PUBLISH_TOKEN}"},
                                  body=b'{"type":"agent_event","step":1,"agent":"a","phase":"x","message":"m"}')
    assert response.status == 400
    await response.read_json()
    assert response.body == (b'{"error":"an agent_event needs phase: one of start, progress, finding, handoff, '
                             b'done"}')


class TestWithoutTheTable:
    """An older schema: no run_agent_events table. Fanned out only; snapshots keep their shape."""

    @pytest.fixture
    def schema(self):
        return PROJECT

    @pytest.mark.gen_test
    async def test_an_agent_event_is_delivered_but_not_stored_and_snapshots_have_no_agent_events(
            self, port, world, context):
        assert not context.store.has_agent_events
        stream = await open_request(port, world.events_path())
        assert b"agentEvents" not in await next_data(stream)
        status, _ = await post(port, FULL)
        assert status == 202
        assert await next_data(stream) == b"data: " + FULL_JSON + b"\n\n"
        with context.store.database.connection_context():
            assert "run_agent_events" not in context.store.database.get_tables()
        later = await open_request(port, world.events_path())
        assert b"agentEvents" not in await next_data(later)

    @pytest.mark.gen_test
    async def test_the_table_is_looked_for_once_not_per_request(self, port, world, context, monkeypatch):
        calls = []
        database = context.store.database
        original = database.get_tables
        monkeypatch.setattr(database, "get_tables", lambda *args, **kwargs: calls.append(1) or original())
        for _ in range(3):
            stream = await open_request(port, world.events_path())
            await next_data(stream)
        assert calls == []


def test_sentri_emit_with_a_database_stores_an_agent_event_then_publishes_it(
        settings, context, world, redis_server):  # noqa: F811
    payload = json.dumps({key: value for key, value in FULL.items() if key != "type"})
    result = emit(redis_server.url, "agent_event", payload, database_url=settings.database_url)
    assert (result.returncode, result.stderr) == (0, b""), result.stderr
    [(_, event)] = history(redis_server)
    assert json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8") == FULL_JSON
    assert stored_rows(context)[0][:5] == ("RUN-1", 2, "triage", "handoff", "To the fixer \u2713")


def test_sentri_emit_refuses_an_invalid_agent_event_and_neither_stores_nor_publishes_it(
        settings, context, world, redis_server):  # noqa: F811
    result = emit(redis_server.url, "agent_event", '{"step":1,"agent":"a","phase":"later","message":"m"}',
                  database_url=settings.database_url)
    assert (result.returncode, result.stdout, result.stderr) == (
        2, b"", b"sentri: an agent_event needs phase: one of start, progress, finding, handoff, done\n")
    assert history(redis_server) == []
    assert stored_rows(context) == []


@pytest.mark.gen_test(timeout=90)
async def test_the_run_page_shows_the_agents_narrative_from_the_snapshot_and_as_it_grows(port, world, context):
    from .browser import chromium, open_page
    from .test_browser import assert_clean, page_url

    await context.publisher.publish("RUN-1", "agent_event", {
        "step": 1, "agent": "planner", "phase": "start", "message": "Planning <b>3</b> tests",
        "createdAt": "2026-01-01T00:00:01.000Z"})
    async with chromium() as browser, open_page(browser, page_url(port, "RUN-1", world.token)) as page:
        await page.wait_for_connection("live")
        await context.publisher.publish("RUN-1", "agent_event", {
            "step": 1, "agent": "planner", "phase": "handoff", "message": "Over to triage", "nextAgent": "triage"})
        await context.publisher.publish("RUN-1", "agent_event", {
            "step": 2, "agent": "triage", "phase": "finding", "message": "TC-2 is flaky", "data": {"testId": "TC-2"}})
        await page.page.wait_for_function("count => document.querySelectorAll('#agents li').length >= count",
                                          arg=3, timeout=10_000)
        rows = await page.page.eval_on_selector_all("#agents li", """items => items.map(i => [
            i.querySelector('.agent-name').textContent, i.querySelector('.agent-phase').textContent,
            i.querySelector('.agent-message').textContent,
            i.querySelector('.agent-next') ? i.querySelector('.agent-next').textContent : null])""")
        assert rows == [["planner", "start", "Planning <b>3</b> tests", None],
                        ["planner", "handoff", "Over to triage", "\u2192 triage"],
                        ["triage", "finding", "TC-2 is flaky", None]]
        assert await page.page.is_visible("#agents-section")
        await page.screenshot("agent_events")
        assert_clean(page)


@pytest.mark.gen_test
async def test_an_agent_event_stored_during_the_snapshot_read_is_not_sent_again_live(port, world, context):
    from sentri.event_intake import agent_event_body
    from sentri.writes import append_agent_event

    racing = agent_event_body({key: value for key, value in FULL.items() if key != "type"})
    response = await open_racing_a_producer(context, port, world.events_path(),
                                            lambda: append_agent_event("RUN-1", racing),
                                            lambda: context.hub.emit("RUN-1", "agent_event", racing))

    snapshot = await response.next_event()
    assert [event["message"] for event in snapshot["run"]["agentEvents"]] == [FULL["message"]]
    later = {**racing, "step": 3, "createdAt": "2026-01-01T00:00:03.000Z"}
    context.hub.emit("RUN-1", "agent_event", later)
    assert json.loads((await next_data(response))[6:]) == {"type": "agent_event", **later}
