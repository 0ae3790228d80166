"""Answers shared between connects (sentri.connect_reads) and the bounds on their age.

Against the test database (SQLite, or PostgreSQL with SENTRI_TEST_DATABASE_URL) and with the
in-process bus and the Redis relay: a found run's snapshot is reused only while the run has had
no event, and a membership, a run's visibility or a finished run changed in the database alone
is seen once MAX_AGE_S has passed.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, List

import pytest

from sentri import connect_reads
from sentri.connect_reads import MAX_AGE_S, AgedAnswers, VerifiedTokens
from sentri.event_intake import PreparedEvent, prepare
from sentri.hub import Hub
from sentri.models import Project, Run, WorkspaceMember
from sentri.stream import Frame

from .conftest import JWT_SECRET, token_for
from .lookups import held_lookup
from .redis_server import redis_server  # noqa: F401 (fixture)
from .services import wait_until
from .sseclient import open_request

PAST_THE_BOUND_S = MAX_AGE_S + 0.2


@pytest.fixture(params=["in_process", pytest.param("redis", marks=pytest.mark.redis)])
def settings(request: Any, settings: Any) -> Any:
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return settings.replace(redis_url=server.url, retry_ms=0)
    return settings.replace(retry_ms=0)


async def connected(context: Any) -> None:
    wait_connected = getattr(context.bus, "wait_connected", None)
    if wait_connected is not None:
        assert await wait_connected(5.0)


def update(context: Any, query: Any) -> None:
    with context.store.database.connection_context():
        query.execute()


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


async def snapshot_of(port: int, path: str) -> Any:
    response = await open_request(port, path)
    assert response.status == 200
    event = await response.next_event()
    assert event["type"] == "snapshot"
    return response, event


@pytest.mark.gen_test(timeout=30)
async def test_a_second_connect_takes_the_first_ones_snapshot_until_the_run_has_an_event(port, context, world):
    await connected(context)
    first, snapshot = await snapshot_of(port, world.events_path())
    reads = context.store.reads
    _, again = await snapshot_of(port, world.events_path())
    assert again == snapshot and context.store.reads == reads  # no database trip

    await context.publisher.publish("RUN-1", "log", {"message": "stored after the first read"})
    assert (await first.next_event())["type"] == "log"
    late, fresh = await snapshot_of(port, world.events_path())
    assert context.store.reads == reads + 1
    assert fresh["run"]["logs"][-1].endswith("stored after the first read")
    # Once: in the snapshot, not again live.
    await context.publisher.publish("RUN-1", "llm_token", {"token": "next"})
    assert (await late.next_event())["type"] == "llm_token"


@pytest.mark.gen_test(timeout=30)
async def test_a_batch_of_events_ends_the_reuse_of_a_snapshot_read_before_it(port, context, world):
    # Found by the soak (bench/soak.py): events delivered together (a batch, or a burst the
    # relay read at once) did not change the run's version, so a connect within the bound took
    # the snapshot read before them while its id, read from history, was already past them:
    # the batch's log lines were in neither the snapshot nor the live stream.
    await connected(context)
    first, _ = await snapshot_of(port, world.events_path())
    reads = context.store.reads
    batch = [PreparedEvent("log", *prepare("log", {"message": f"batched line {n}"})) for n in (1, 2)]
    await context.publisher.publish_prepared("RUN-1", batch)
    assert [(await first.next_event())["type"] for _ in batch] == ["log", "log"]
    late, fresh = await snapshot_of(port, world.events_path())
    assert context.store.reads == reads + 1
    assert [line.split("] ", 1)[1] for line in fresh["run"]["logs"][-2:]] == ["batched line 1", "batched line 2"]
    await context.publisher.publish("RUN-1", "llm_token", {"token": "next"})
    assert (await late.next_event()) == {"type": "llm_token", "token": "next"}


@pytest.mark.gen_test(timeout=30)
async def test_a_snapshot_is_shared_only_between_connects_that_read_the_same_history_id(context, world, rows):
    # Found by the soak: an event in history (and its log in the database) that this instance
    # had not delivered yet left the run's version as it was, so a connect whose history id
    # already counted the event took a snapshot read before it, without its log line.
    stream = context.hub.reserve("RUN-1")
    assert stream is not None

    async def snapshot(history_id: str) -> bytes:
        lookup = await context.store.open_stream("USR-1", "WS-1", "RUN-1", reserved=True, history_id=history_id)
        return bytes(lookup.snapshot_json)

    first = await snapshot("1-1")
    reads = context.store.reads
    assert await snapshot("1-1") == first and context.store.reads == reads
    rows.log(world.run, 1, "[2026-01-01T00:00:01.000Z] in history, not delivered here yet")
    fresh = await snapshot("1-2")
    assert context.store.reads == reads + 1
    assert b'"logs":["[2026-01-01T00:00:01.000Z] in history, not delivered here yet"]' in fresh
    assert len(context.store._runs) == 1  # one answer per run: the id is not part of its key (memory)
    stream.close("done")


@pytest.mark.gen_test(timeout=30)
async def test_a_run_finished_in_the_database_alone_is_served_finished_once_the_bound_has_passed(
        port, context, world):
    await connected(context)
    await snapshot_of(port, world.events_path())  # stays open: the run's version does not change
    update(context, Run.update(status="completed", passed=1, failed=0, total=1).where(Run.id == "RUN-1"))
    await asyncio.sleep(PAST_THE_BOUND_S)
    response, snapshot = await snapshot_of(port, world.events_path())
    assert snapshot["run"]["status"] == "completed"
    assert (await response.next_event())["type"] == "done"
    assert await response.server_closed()


@pytest.mark.gen_test(timeout=30)
async def test_a_removed_membership_is_refused_once_the_bound_has_passed(port, context, world):
    await connected(context)
    await snapshot_of(port, world.events_path())
    update(context, WorkspaceMember.delete().where(WorkspaceMember.userId == world.user["id"]))
    await asyncio.sleep(PAST_THE_BOUND_S)
    response = await open_request(port, world.events_path())
    assert response.status == 403


@pytest.mark.gen_test(timeout=30)
async def test_a_deleted_run_is_refused_once_the_bound_has_passed(port, context, world):
    await connected(context)
    await snapshot_of(port, world.events_path())
    update(context, Run.update(deletedAt=now_iso()).where(Run.id == "RUN-1"))
    await asyncio.sleep(PAST_THE_BOUND_S)
    response = await open_request(port, world.events_path())
    assert response.status == 404
    assert await response.read_json() == {"error": "not found"}


@pytest.mark.gen_test(timeout=30)
async def test_a_deleted_project_is_refused_once_the_bound_has_passed(port, context, world):
    await connected(context)
    await snapshot_of(port, world.events_path())
    update(context, Project.update(deletedAt=now_iso()).where(Project.id == "PRJ-1"))
    await asyncio.sleep(PAST_THE_BOUND_S)
    response = await open_request(port, world.events_path())
    assert response.status == 404
    assert await response.read_json() == {"error": "project not found"}


@pytest.mark.gen_test(timeout=30)
async def test_connects_at_once_share_one_read_and_all_get_the_snapshot(port, context, world):
    await connected(context)
    reads = context.store.reads
    opened = await asyncio.gather(*(snapshot_of(port, world.events_path()) for _ in range(20)))
    assert len({str(snapshot) for _, snapshot in opened}) == 1
    assert context.store.reads == reads + 1  # the membership and the run in one trip, shared by all


@pytest.mark.gen_test(timeout=30)
async def test_connects_joining_a_read_take_its_answer_even_when_it_is_too_old_to_keep(port, context, world):
    # A stalled loop can age an answer past the bound before the connects waiting on it resume.
    await connected(context)
    context.store.max_age_s = 0.0
    reads = context.store.reads
    with held_lookup(context) as lookup:
        first = await lookup.request(port, world.events_path())
        others = [asyncio.ensure_future(snapshot_of(port, world.events_path())) for _ in range(19)]
        await wait_until(lambda: context.store.shared >= 19, what="every other connect joined the first read")
    opened = await asyncio.gather(*others)
    assert (await (await first).next_event())["type"] == "snapshot" and len(opened) == 19
    # The membership read and (the first one's run having expired too) one run read joined by the
    # rest; not a read per connect, each one finding the previous answer already expired.
    assert context.store.reads <= reads + 2
    assert len(context.store._workspaces) == 1 and len(context.store._runs) == 1  # kept, expired at once
    reads = context.store.reads
    await snapshot_of(port, world.events_path())
    assert context.store.reads == reads + 1  # nothing reused


@pytest.mark.gen_test(timeout=30)
async def test_a_refusal_is_reused_only_within_the_bound(port, context, world, rows):
    await connected(context)
    other = rows.project(rows.workspace(rows.user(), id="WS-2"), id="PRJ-2")
    rows.run(other, id="RUN-2")
    response = await open_request(port, world.events_path("RUN-2"))
    assert response.status == 404
    update(context, Project.update(workspaceId="WS-1").where(Project.id == "PRJ-2"))
    await asyncio.sleep(PAST_THE_BOUND_S)
    response, snapshot = await snapshot_of(port, world.events_path("RUN-2"))
    assert snapshot["run"]["id"] == "RUN-2"


# -- units ------------------------------------------------------------------------------------

def test_a_verified_token_is_checked_once_and_reused_until_its_exp(monkeypatch: Any, world: Any) -> None:
    calls: List[str] = []
    real_verify = connect_reads.verify

    def counting(token: str, secret: str) -> Any:
        calls.append(token)
        return real_verify(token, secret)

    monkeypatch.setattr(connect_reads, "verify", counting)
    now = [1_900_000_000.0]
    tokens = VerifiedTokens(JWT_SECRET, clock=lambda: now[0])
    token = token_for(world.user, "WS-1", lifetime_s=60, now=now[0] - 1)
    identity = tokens.verify(token)
    assert identity is not None and tokens.verify(token) is identity
    assert calls == [token]
    now[0] = identity.expires_at  # PyJWT refuses from exp on; so does the remembered token
    monkeypatch.setattr(connect_reads, "verify", lambda token, secret: None)  # the real clock is earlier
    assert tokens.verify(token) is None
    assert tokens.verify(token + "x") is None


def test_remembered_tokens_are_bounded(world: Any) -> None:
    tokens = VerifiedTokens(JWT_SECRET, max_entries=3)
    minted = [token_for(world.user, "WS-1") for _ in range(5)]
    assert all(tokens.verify(token) is not None for token in minted)
    assert len(tokens._verified) <= 3


def test_expired_answers_are_forgotten_as_new_ones_come_not_kept_until_the_bound_on_entries() -> None:
    # Found by the soak: a snapshot per run ever connected to stayed in memory, expired.
    answers: AgedAnswers[bytes] = AgedAnswers(max_entries=100_000)
    for run in range(1000):
        answers.put(f"RUN-{run}", 10.0 + run / 1000, None, b"snapshot" * 100, now=9.0 + run / 1000)
    assert len(answers) == 1000  # all still within their bound
    answers.put("RUN-NEW", 12.5, None, b"snapshot", now=10.4995)
    assert len(answers) == 501  # the 500 whose bound had passed are gone
    answers.put("RUN-999", 13.0, None, b"again", now=11.5)  # asked again: moved to the end
    answers.put("RUN-LAST", 13.5, None, b"snapshot", now=12.0)
    assert len(answers) == 3
    assert answers.get("RUN-999", now=12.0).value == b"again"
    assert answers.get("RUN-NEW", now=12.0) is not None and answers.get("RUN-0", now=12.0) is None


def test_a_runs_version_changes_with_every_event_and_is_none_without_listeners() -> None:
    hub = Hub(heartbeat_interval_s=5, max_listeners_per_run=10, max_writable_bytes=1 << 20)
    assert hub.run_version("RUN-1") is None
    stream = hub.reserve("RUN-1")
    assert stream is not None
    first = hub.run_version("RUN-1")
    assert first is not None and hub.run_version("RUN-1") == first
    hub.reserve("RUN-1")
    assert hub.run_version("RUN-1") == first  # more listeners are not a change
    hub.deliver("RUN-1", Frame(b"data: {}\n\n"))
    second = hub.run_version("RUN-1")
    assert second not in (None, first)
    hub.deliver_many("RUN-1", [Frame(b"data: {}\n\n"), Frame(b"data: {}\n\n")])  # a batch, a relayed burst
    assert hub.run_version("RUN-1") not in (None, first, second)
    for listener in list(hub.runs["RUN-1"]):
        hub.forget(listener)
    assert hub.run_version("RUN-1") is None
    hub.reserve("RUN-1")
    assert hub.run_version("RUN-1") not in (None, first)
