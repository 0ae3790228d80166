"""Many streams opening at once share a bounded pool of PostgreSQL connections.

Every lookup runs on one of SENTRI_DB_WORKERS threads, each holding a pooled connection for
one call; so however many streams open together, the server sees at most that many
connections, and no open waits for a connection that never comes. Runs on the local
PostgreSQL server in every tox env (a private database per test), counting what the server
itself reports in pg_stat_activity, not what the pool believes.

To make the opens really overlap, another session holds an exclusive lock on ``runs`` while
they arrive: every lookup then waits inside PostgreSQL holding its connection, which is the
worst case for the pool (a slow database under a reconnect storm).
"""

from __future__ import annotations

import asyncio
import threading

import psycopg2
import pytest

from . import pg
from .conftest import token_for
from .frames import next_data
from .services import wait_until
from .sseclient import open_request

STREAMS = 40


@pytest.fixture(params=[2, 3, 4], ids=lambda workers: f"db_workers={workers}")
def db_workers(request):
    return request.param


@pytest.fixture
def postgres_url():
    with pg.temporary_database(pg.server_url()) as url:
        yield url


@pytest.fixture
def settings(settings, postgres_url, db_workers):
    return settings.replace(database_url=postgres_url, db_workers=db_workers)


class ConnectionSampler:
    """Polls pg_stat_activity on its own connection (to another database) and keeps the peak."""

    def __init__(self, database_url: str, ignore_pid: int) -> None:
        self.database_url = database_url
        self.ignore_pid = ignore_pid
        self.current = 0
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="pg-sampler", daemon=True)

    def _sample(self) -> None:
        connection = pg._connect(pg.server_url())
        name = self.database_url.rsplit("/", 1)[1]
        try:
            with connection.cursor() as cursor:
                while not self._stop.is_set():
                    cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                                   (name, self.ignore_pid))
                    self.current = int(cursor.fetchone()[0])
                    self.peak = max(self.peak, self.current)
                    self.samples += 1
        finally:
            connection.close()

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)


class TableLock:
    """An open transaction holding ACCESS EXCLUSIVE on a table: readers wait until release()."""

    def __init__(self, database_url: str, table: str) -> None:
        self.connection = psycopg2.connect(database_url)
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            self.pid = int(cursor.fetchone()[0])
            cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.connection.rollback()
        self.connection.close()


@pytest.mark.gen_test(timeout=60)
async def test_forty_streams_opening_at_once_all_get_their_snapshot_within_the_pool_bound(
        port, world, rows, context, postgres_url, db_workers):
    assert context.store.database.database == postgres_url.rsplit("/", 1)[1]  # really on PostgreSQL
    # Forty runs and forty users, not one: opens of one run (and one user) share their reads (Store.open_stream).
    run_ids = [rows.run(world.project, id=f"RUN-{100 + index}")["id"] for index in range(STREAMS)]
    tokens = {}
    for run_id in run_ids:
        user = rows.user()
        rows.member(world.workspace, user)
        tokens[run_id] = token_for(user, world.workspace["id"])

    async def open_one(run_id):
        response = await open_request(port, world.events_path(run_id, token=tokens[run_id]))
        return response, await next_data(response, timeout=30)

    lock = TableLock(postgres_url, "runs")
    try:
        with ConnectionSampler(postgres_url, ignore_pid=lock.pid) as sampler:
            opening = asyncio.gather(*(open_one(run_id) for run_id in run_ids))
            # Every worker is now stuck in PostgreSQL on its own connection; the other opens queue.
            try:
                await wait_until(lambda: sampler.current == db_workers, 20, "every worker waiting in PostgreSQL")
            except TimeoutError:
                raise AssertionError(f"connections now {sampler.current}, peak {sampler.peak}") from None
            assert not opening.done()
            lock.release()
            opened = await opening
    finally:
        if not lock.connection.closed:
            lock.release()
    assert [response.status for response, _ in opened] == [200] * STREAMS
    for run_id, (_, frame) in zip(run_ids, opened):
        assert frame.startswith(b'data: {"type":"snapshot","run":{"id":"' + run_id.encode() + b'","projectId":"PRJ-1",'
                                b'"type":"test_run","status":"running",')
    assert sorted(context.hub.runs) == sorted(run_ids)
    # Never more connections than workers, at the peak of the storm or after it.
    assert sampler.peak == db_workers
    assert pg.connection_count(pg.server_url(), postgres_url) <= db_workers

    for run_id in run_ids:
        context.hub.emit(run_id, "done", {"status": "completed"})
    for response, _ in opened:
        assert await next_data(response) == b'data: {"type":"done","status":"completed"}\n\n'
        assert await response.server_closed()
