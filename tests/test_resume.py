"""Last-Event-ID resume on one instance: replay or snapshot, no gap, no duplicate, 204 after done."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from sentri.history import History, Replay
from sentri.resume import plan_start

from .sseclient import open_request


@pytest.fixture
def settings(settings):
    return settings.replace(retry_ms=2500, retry_jitter_ms=0, history_max_events=5)


def event_ids_and_data(body: bytes):
    """[(id or None, parsed data)] of every event frame in a body (retry and comments skipped)."""
    events = []
    for frame in body.split(b"\n\n"):
        lines = frame.split(b"\n")
        data = [line[6:] for line in lines if line.startswith(b"data: ")]
        if not data:
            continue
        ids = [line[4:].decode() for line in lines if line.startswith(b"id: ")]
        events.append((ids[0] if ids else None, json.loads(data[0])))
    return events


@pytest.mark.gen_test
async def test_a_stream_opens_with_retry_then_the_snapshot_carrying_the_last_event_id(port, world, context):
    last = context.hub.emit("RUN-1", "llm_token", {"token": "a"})
    response = await open_request(port, world.events_path())
    assert response.status == 200
    assert "sentri-resume" not in response.headers
    assert await response.next_frame() == b"retry: 2500\n\n"
    snapshot = await response.next_frame()
    assert snapshot.startswith(b"id: %s\ndata: {\"type\":\"snapshot\"," % last.encode())
    token_id = context.hub.emit("RUN-1", "llm_token", {"token": "b"})
    assert await response.next_frame() == b'id: %s\ndata: {"type":"llm_token","token":"b"}\n\n' % token_id.encode()


@pytest.mark.gen_test
async def test_retry_jitter_gives_each_connection_its_own_delay_within_the_bound(port, world, context):
    context.settings = context.settings.replace(retry_ms=1000, retry_jitter_ms=1000)
    delays = set()
    for _ in range(6):
        response = await open_request(port, world.events_path())
        frame = await response.next_frame()
        assert frame.startswith(b"retry: ") and frame.endswith(b"\n\n")
        delays.add(int(frame[7:-2]))
        response.close()
    assert all(1000 <= delay <= 2000 for delay in delays)
    assert len(delays) > 1


@pytest.mark.gen_test
async def test_retry_zero_sends_no_retry_line(port, world, context):
    context.settings = context.settings.replace(retry_ms=0)
    response = await open_request(port, world.events_path())
    assert (await response.next_frame()).startswith(b'data: {"type":"snapshot"')


@pytest.mark.gen_test
async def test_resume_replays_exactly_the_missed_events_then_goes_live(port, world, context):
    seen = context.hub.emit("RUN-1", "llm_token", {"token": "1"})
    missed = [context.hub.emit("RUN-1", "llm_token", {"token": str(n)}) for n in (2, 3)]
    response = await open_request(port, world.events_path(), headers={"Last-Event-ID": seen})
    assert response.status == 200
    assert response.headers["sentri-resume"] == "replay"
    assert await response.next_frame() == b"retry: 2500\n\n"
    for event_id, token in zip(missed, ("2", "3")):
        assert await response.next_frame() == (
            b'id: %s\ndata: {"type":"llm_token","token":"%s"}\n\n' % (event_id.encode(), token.encode()))
    live = context.hub.emit("RUN-1", "llm_token", {"token": "4"})
    assert await response.next_frame() == b'id: %s\ndata: {"type":"llm_token","token":"4"}\n\n' % live.encode()


@pytest.mark.gen_test
async def test_the_query_parameter_resumes_a_first_connect(port, world, context):
    seen = context.hub.emit("RUN-1", "llm_token", {"token": "1"})
    missed = context.hub.emit("RUN-1", "llm_token", {"token": "2"})
    response = await open_request(port, world.events_path() + f"&last_event_id={seen}")
    assert response.headers["sentri-resume"] == "replay"
    await response.next_frame()
    assert await response.next_frame() == b'id: %s\ndata: {"type":"llm_token","token":"2"}\n\n' % missed.encode()


@pytest.mark.gen_test
async def test_resume_after_a_drop_while_events_keep_flowing_loses_and_repeats_nothing(port, world, context):
    total = 300
    context.hub.history.max_events = 1000  # room for the whole run

    async def produce():
        for n in range(total):
            context.hub.emit("RUN-1", "llm_token", {"token": str(n)})
            await asyncio.sleep(0.001)
        context.hub.emit("RUN-1", "done", {"status": "completed"})

    first = await open_request(port, world.events_path())
    assert (await first.next_event())["type"] == "snapshot"
    producer = asyncio.ensure_future(produce())
    received = []
    last_id = None
    for _ in range(3):  # drop twice mid-flow, resume each time
        if last_id is None:
            response = first
        else:
            response = await open_request(port, world.events_path(), headers={"Last-Event-ID": last_id})
            assert response.headers["sentri-resume"] == "replay"
        target = len(received) + 60
        while len(received) < target:
            frame = await response.next_frame()
            for event_id, event in event_ids_and_data(frame):
                if event["type"] == "llm_token":
                    received.append(int(event["token"]))
                    last_id = event_id
        response.close()
    response = await open_request(port, world.events_path(), headers={"Last-Event-ID": last_id})
    body = await response.read_to_end(timeout=10)
    await producer
    events = event_ids_and_data(body)
    received += [int(event["token"]) for _, event in events if event["type"] == "llm_token"]
    assert events[-1][1] == {"type": "done", "status": "completed"}
    assert received == list(range(total))


@pytest.mark.gen_test
async def test_an_id_from_another_run_gets_the_snapshot_and_never_that_runs_events(port, world, rows, context):
    rows.run(world.project, id="RUN-2")
    other = context.hub.emit("RUN-2", "llm_token", {"token": "secret of RUN-2"})
    context.hub.emit("RUN-2", "llm_token", {"token": "more of RUN-2"})
    response = await open_request(port, world.events_path(), headers={"Last-Event-ID": other})
    assert response.headers["sentri-resume"] == "snapshot"
    assert await response.next_frame() == b"retry: 2500\n\n"
    snapshot = await response.next_frame()
    assert snapshot.startswith(b'data: {"type":"snapshot","run":{"id":"RUN-1"')
    assert b"RUN-2" not in snapshot


@pytest.mark.gen_test
@pytest.mark.parametrize("forged", ["0-0", "99999999999999-1", "abc", "1-2\r\nx", "-", "9" * 80])
async def test_a_forged_or_malformed_id_gets_the_snapshot(port, world, context, forged):
    context.hub.emit("RUN-1", "llm_token", {"token": "a"})
    response = await open_request(port, world.events_path(), headers={"Last-Event-ID": forged.replace("\r\n", "")})
    assert response.headers["sentri-resume"] == "snapshot"
    await response.next_frame()
    assert (await response.next_event())["type"] == "snapshot"


@pytest.mark.gen_test
async def test_an_id_trimmed_out_of_history_gets_the_snapshot(port, world, context):
    oldest = context.hub.emit("RUN-1", "llm_token", {"token": "0"})
    for n in range(5):  # history keeps 5 events in this module
        context.hub.emit("RUN-1", "llm_token", {"token": str(n + 1)})
    response = await open_request(port, world.events_path(), headers={"Last-Event-ID": oldest})
    assert response.headers["sentri-resume"] == "snapshot"


@pytest.mark.gen_test
async def test_resume_is_authorised_like_a_new_stream(port, world, rows, context):
    seen = context.hub.emit("RUN-1", "llm_token", {"token": "1"})
    stranger = rows.user(id="USR-9")
    rows.workspace(stranger, id="WS-9")
    from .conftest import token_for

    response = await open_request(port, world.events_path(token=token_for(stranger, "WS-9")),
                                  headers={"Last-Event-ID": seen})
    assert response.status == 404
    assert await response.read_json() == {"error": "project not found"}
    response = await open_request(port, "/api/v1/runs/RUN-1/events", headers={"Last-Event-ID": seen})
    assert response.status == 401
    assert await response.read_json() == {"error": "Authentication required."}


@pytest.mark.gen_test
async def test_a_client_that_has_the_done_gets_204_no_content(port, world, context):
    done = context.hub.emit("RUN-1", "done", {"status": "completed"})
    with context.store.database.connection_context():
        from sentri.models import Run

        Run.update(status="completed").where(Run.id == "RUN-1").execute()
    response = await open_request(port, world.events_path(), headers={"Last-Event-ID": done})
    assert response.status == 204
    assert response.status_line == b"HTTP/1.1 204 No Content"
    assert "transfer-encoding" not in response.headers and response.headers.get("content-length", "0") == "0"
    assert context.hub.runs == {}


@pytest.mark.gen_test
async def test_a_finished_run_connect_gives_the_done_its_history_id_so_the_reconnect_gets_204(port, world, context):
    token = context.hub.emit("RUN-1", "llm_token", {"token": "a"})
    done = context.hub.emit("RUN-1", "done", {"status": "completed"})
    with context.store.database.connection_context():
        from sentri.models import Run

        Run.update(status="completed").where(Run.id == "RUN-1").execute()
    response = await open_request(port, world.events_path())
    body = await response.read_to_end()
    assert [event_id for event_id, _ in event_ids_and_data(body)] == [done, done]
    resumed = await open_request(port, world.events_path(), headers={"Last-Event-ID": token})
    assert resumed.headers["sentri-resume"] == "replay"
    assert await resumed.read_to_end() == (
        b'retry: 2500\n\nid: %s\ndata: {"type":"done","status":"completed"}\n\n' % done.encode())


@pytest.mark.gen_test
async def test_a_history_that_answers_again_after_an_outage_is_logged_once_as_available(caplog):
    caplog.set_level(logging.INFO, logger="sentri.resume")
    history = History()
    history.unavailable = True  # the last read failed
    plan = await plan_start(history, "RUN-1", None)
    assert plan.history_answered and not history.unavailable
    await plan_start(history, "RUN-1", None)
    assert [r.getMessage() for r in caplog.records if r.name == "sentri.resume"] == ["history available again"]


@pytest.mark.gen_test
async def test_a_replay_read_after_an_outage_ends_it_once_so_the_next_outage_is_logged_once_more(caplog, expect_log):
    # The replay path used to clear the outage silently: each connect of a flapping history
    # then logged its own "unavailable" line (found in the soak's logs).
    expect_log("sentri.resume", r"history unavailable, sending snapshots until it answers \(ConnectionError\)")
    caplog.set_level(logging.INFO, logger="sentri.resume")
    history = FlappingHistory()
    history.unavailable = True  # the last read failed
    assert (await plan_start(history, "RUN-1", "5-1")).replays
    history.answers = False
    for _ in range(3):
        assert (await plan_start(history, "RUN-1", "5-1")).outcome == "history_unavailable"
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "sentri.resume"] == [
        ("INFO", "history available again"),
        ("WARNING", "history unavailable, sending snapshots until it answers (ConnectionError)")]


class FlappingHistory(History):
    """Replays anything after any id while ``answers``; fails every read when not."""

    answers = True

    async def done_id(self, run_id):
        if not self.answers:
            raise ConnectionError("history away")
        return None

    async def replay_after(self, run_id, event_id):
        return Replay([], client_has_done=False)


class UnreadableHistory(History):
    async def done_id(self, run_id):
        raise ConnectionError("history away")


@pytest.mark.gen_test
async def test_a_resume_while_history_cannot_be_read_is_answered_with_the_snapshot_and_says_why(expect_log):
    expect_log("sentri.resume", r"history unavailable, sending snapshots until it answers \(ConnectionError\)")
    asked = await plan_start(UnreadableHistory(), "RUN-1", "5-1")
    assert (asked.replays, asked.outcome) == (False, "history_unavailable")
    assert (await plan_start(UnreadableHistory(), "RUN-1", None)).outcome is None  # no resume asked

