"""Group commit: many log lines per transaction, seq still exactly 1..N per run in publish
order, across processes (SQLite and PostgreSQL), and a 202 still means committed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from sentri.models import Run, RunLog
from sentri.writes import DONE, LOG, Write, commit_writes

from . import pg
from .console import clean_env
from .services import free_port, stop_process, wait_for_port
from .test_durable_logs import PG_SERVER, models_bound_to

PUBLISH_TOKEN = "publish-secret-0123456789"

# One producer process: ``batches`` transactions of ``per_batch`` lines spread over RUN-A and RUN-B.
PRODUCER = """
import sys
from sentri.models import database_proxy
from sentri.store import open_database
from sentri.writes import LOG, Write, commit_writes
url, name, batches, per_batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
database = open_database(url, ".", 1)
database_proxy.initialize(database)
for batch in range(batches):
    writes = [Write("RUN-A" if n % 3 else "RUN-B", LOG, {"message": f"{name} {batch * per_batch + n}"})
              for n in range(per_batch)]
    with database.connection_context():
        commit_writes(writes)
database.close_all()
"""


@pytest.fixture(params=["sqlite", "postgres"])
def database_and_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/logs.db"
        with models_bound_to(url, tmp_path) as database:
            yield database, url
        return
    with pg.temporary_database(PG_SERVER) as url, models_bound_to(url, tmp_path) as database:
        yield database, url


def stored(run_id):
    query = RunLog.select(RunLog.seq, RunLog.message).where(RunLog.runId == run_id).order_by(RunLog.seq)
    return list(query.tuples())


def test_producers_in_several_processes_get_seq_one_to_n_per_run_in_their_order(database_and_url):
    database, url = database_and_url
    producers, batches, per_batch = 4, 15, 10
    processes = [subprocess.Popen([sys.executable, "-c", PRODUCER, url, f"p{i}", str(batches), str(per_batch)])
                 for i in range(producers)]
    assert [process.wait(timeout=60) for process in processes] == [0] * producers
    with database.connection_context():
        lines = {run_id: stored(run_id) for run_id in ("RUN-A", "RUN-B")}
    total = producers * batches * per_batch
    assert sum(len(rows) for rows in lines.values()) == total
    for rows in lines.values():
        assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
        for producer in range(producers):  # each producer's lines in the order it wrote them
            mine = [int(message.split()[1]) for _, message in rows if message.startswith(f"p{producer} ")]
            assert mine == sorted(mine)


def test_one_transaction_numbers_lines_of_several_runs_and_records_a_done_after_them(database_and_url):
    database, _ = database_and_url
    with database.connection_context():
        Run.insert(id="RUN-A", projectId="P", type="test_run", status="running",
                   startedAt="2026-01-01T00:00:00.000Z").execute()
        RunLog.insert(runId="RUN-A", seq=7, level="info", message="old", createdAt="x").execute()
        seqs = commit_writes([Write("RUN-A", LOG, {"message": "a1"}, "warn"), Write("RUN-B", LOG, {"message": "b1"}),
                              Write("RUN-A", DONE, {"status": "failed", "total": 3}),
                              Write("RUN-A", LOG, {"message": "a2"}, "loud")])
        assert seqs == [8, 1, None, 9]
        assert list(RunLog.select(RunLog.seq, RunLog.level, RunLog.message).where(RunLog.runId == "RUN-A")
                    .order_by(RunLog.seq).tuples()) == [(7, "info", "old"), (8, "warn", "a1"), (9, "info", "a2")]
        assert Run.select(Run.status, Run.total).where(Run.id == "RUN-A").tuples().first() == ("failed", 3)


@pytest.mark.gen_test
async def test_concurrent_publishes_share_transactions_and_keep_publish_order(context, world):
    publisher = context.publisher
    ids = await asyncio.gather(*(publisher.log("RUN-1", f"line {n}") for n in range(200)))
    assert len(set(ids)) == 200
    assert publisher.committer.writes == 200
    assert publisher.committer.transactions < 50  # grouped: the turns filled while one ran
    with context.store.database.connection_context():
        rows = stored("RUN-1")
    assert [seq for seq, _ in rows] == list(range(1, 201))
    assert [message.split("] ", 1)[1] for _, message in rows] == [f"line {n}" for n in range(200)]


async def after_loop_turns(turns, publish):
    for _ in range(turns):
        await asyncio.sleep(0)
    return await publish()


@pytest.mark.gen_test
async def test_a_line_arriving_while_a_turn_gathers_rides_in_that_turns_transaction(context, world):
    from sentri.group_commit import GATHER_LOOP_TURNS

    publisher = context.publisher
    first = asyncio.ensure_future(publisher.log("RUN-1", "first"))
    # Published GATHER_LOOP_TURNS - 1 loop turns later, as a request read meanwhile would be.
    late = asyncio.ensure_future(after_loop_turns(GATHER_LOOP_TURNS - 1, lambda: publisher.log("RUN-1", "late")))
    await asyncio.gather(first, late)
    assert (publisher.committer.transactions, publisher.committer.writes) == (1, 2)
    with context.store.database.connection_context():
        assert [(seq, message.split("] ", 1)[1]) for seq, message in stored("RUN-1")] == [(1, "first"), (2, "late")]


@pytest.mark.gen_test
async def test_a_line_arriving_after_the_gathering_waits_for_the_next_turn(context, world):
    from sentri.group_commit import GATHER_LOOP_TURNS

    publisher = context.publisher
    first = asyncio.ensure_future(publisher.log("RUN-1", "first"))
    late = asyncio.ensure_future(after_loop_turns(GATHER_LOOP_TURNS + 1, lambda: publisher.log("RUN-1", "late")))
    await asyncio.gather(first, late)
    assert (publisher.committer.transactions, publisher.committer.writes) == (2, 2)


@pytest.mark.gen_test
async def test_a_write_the_database_refuses_fails_only_its_own_publisher(context, world, monkeypatch):
    import sentri.group_commit as group_commit

    real = group_commit.commit_writes

    def refusing(writes, agent_events_table=True):
        if any(write.body.get("message", "").endswith("poison") for write in writes):
            raise RuntimeError("refused")
        return real(writes, agent_events_table)

    monkeypatch.setattr(group_commit, "commit_writes", refusing)
    publisher = context.publisher
    results = await asyncio.gather(*(publisher.log("RUN-1", "poison" if n == 5 else f"line {n}")
                                     for n in range(20)), return_exceptions=True)
    assert isinstance(results[5], RuntimeError)
    assert all(isinstance(result, str) for n, result in enumerate(results) if n != 5)
    with context.store.database.connection_context():
        assert [seq for seq, _ in stored("RUN-1")] == list(range(1, 20))


def test_a_202_survives_a_kill_9_right_after_it(settings, world, tmp_path):
    port = free_port()
    env = clean_env(JWT_SECRET=settings.jwt_secret, DATABASE_URL=settings.database_url, PORT=str(port),
                    SENTRI_HOST="127.0.0.1", SENTRI_PUBLISH_TOKEN=PUBLISH_TOKEN, LOG_LEVEL="warn")
    server = subprocess.Popen([sys.executable, "-m", "sentri.cli", "serve"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=server)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/runs/RUN-1/events", method="POST",
            data=json.dumps({"type": "log", "message": "kept after a crash"}).encode(),
            headers={"Authorization": f"Bearer {PUBLISH_TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    finally:
        stop_process(server)
    from sentri.models import database_proxy
    from sentri.store import open_database
    database = open_database(settings.database_url, str(tmp_path), 1)
    previous = database_proxy.obj
    database_proxy.initialize(database)
    try:
        with database.connection_context():
            [(seq, message)] = stored("RUN-1")
    finally:
        database_proxy.initialize(previous)
        database.close_all()
    assert seq == 1 and message.endswith("] kept after a crash")


@pytest.mark.gen_test
async def test_a_publish_for_a_missing_run_fails_alone_in_a_shared_turn(context, world, rows):
    from sentri.event_intake import PreparedEvent
    from sentri.group_commit import RunNotFoundError

    rows.run(world.project, id="RUN-GONE", deletedAt="2026-01-02T00:00:00.000Z")
    publisher = context.publisher

    def line(text):
        return [PreparedEvent("log", {"message": f"[2026-01-01T00:00:00.000Z] {text}"}, "info")]

    results = await asyncio.gather(
        *(publisher.publish_prepared("RUN-1", line(f"line {n}"), require_run=True) for n in range(5)),
        publisher.publish_prepared("RUN-NONE", line("nowhere"), require_run=True),
        publisher.publish_prepared("RUN-GONE", line("deleted"), require_run=True),
        return_exceptions=True)
    assert [type(result) for result in results[5:]] == [RunNotFoundError, RunNotFoundError]
    assert all(isinstance(result, list) for result in results[:5])
    with context.store.database.connection_context():
        assert [seq for seq, _ in stored("RUN-1")] == list(range(1, 6))
        assert stored("RUN-NONE") == [] and stored("RUN-GONE") == []
