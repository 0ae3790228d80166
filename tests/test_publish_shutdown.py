"""Stopping with publishes in flight: each gets an answer that says what happened to it.

Found by the soak (bench/soak.py): publishes waiting on a stalled database when an instance
exited after its drain were cancelled with the process, and Tornado answers a cancelled request
with a bare 500 (no log line). Now the publishes already taken get ``SENTRI_SHUTDOWN_PUBLISH_WAIT_S``
to finish; the ones still queued then are refused with a 503 (nothing stored: retry), and one
still in its database turn when the process exits is answered 504 (it may have been stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from typing import Iterator

import pytest

from sentri.group_commit import ShuttingDownError

from .cluster import Instance
from .conftest import JWT_SECRET
from .sseclient import open_request

PUBLISH_TOKEN = "publish-secret-0123456789"
PATH = "/api/v1/runs/RUN-1/events"
SHUTTING_DOWN = {"error": "server is shutting down", "retryAfter": 1}
INTERRUPTED = {"error": "server stopped before the publish finished: it may have been stored", "retryAfter": 1}


@contextlib.contextmanager
def database_write_lock(database_url: str) -> Iterator[None]:
    """Another client holds the write lock: the server's writes wait until the block ends."""
    if database_url.startswith("sqlite:///"):
        connection = sqlite3.connect(database_url[len("sqlite:///"):], isolation_level=None)
        try:
            connection.execute("BEGIN EXCLUSIVE")
            yield
            connection.execute("ROLLBACK")
        finally:
            connection.close()
        return
    import psycopg2

    connection = psycopg2.connect(database_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("LOCK TABLE runs, run_logs IN ACCESS EXCLUSIVE MODE")
            yield
        connection.rollback()
    finally:
        connection.close()


def stored_messages(context) -> list:
    from sentri.models import RunLog

    with context.store.database.connection_context():
        query = RunLog.select(RunLog.message).where(RunLog.runId == "RUN-1").order_by(RunLog.seq)
        return [message.split("] ", 1)[1] for (message,) in query.tuples()]


@pytest.mark.gen_test(timeout=20)
async def test_a_closing_publisher_lets_the_running_turn_commit_and_refuses_the_queued_publishes(
        context, world, database_url):
    publisher = context.publisher
    with database_write_lock(database_url):
        running = asyncio.ensure_future(publisher.log("RUN-1", "in the running turn"))
        await asyncio.sleep(0.3)  # a turn took it and waits for the lock
        queued = [asyncio.ensure_future(publisher.log("RUN-1", f"queued {n}")) for n in range(3)]
        unfinished = await publisher.close(0.3)
        assert unfinished == 1  # the running turn is never cut
        refused = await asyncio.gather(*queued, return_exceptions=True)
        assert [type(answer) for answer in refused] == [ShuttingDownError] * 3
        assert not running.done()
    assert isinstance(await running, str)  # committed once the lock went, then delivered
    with pytest.raises(ShuttingDownError):
        await publisher.log("RUN-1", "after the close")
    assert stored_messages(context) == ["in the running turn"]


@pytest.mark.gen_test(timeout=20)
async def test_a_closing_publisher_with_nothing_in_flight_returns_at_once(context, world):
    assert await context.publisher.log("RUN-1", "before") is not None
    assert await asyncio.wait_for(context.publisher.close(30.0), timeout=1.0) == 0
    assert stored_messages(context) == ["before"]


async def publish(port: int, message: str):
    body = json.dumps({"type": "log", "message": message}).encode()
    response = await open_request(port, PATH, method="POST", body=body,
                                  headers={"Authorization": f"Bearer {PUBLISH_TOKEN}",
                                           "Content-Type": "application/json"})
    return response.status, response.headers.get("retry-after"), await response.read_json()


@pytest.mark.gen_test(timeout=40)
async def test_sigterm_with_publishes_waiting_on_the_database_answers_each_and_never_500(
        context, world, database_url, tmp_path, session_log_dir):
    serve = Instance({"DATABASE_URL": database_url, "JWT_SECRET": JWT_SECRET, "LOG_JSON": "true",
                      "SENTRI_PUBLISH_TOKEN": PUBLISH_TOKEN, "SENTRI_DRAIN_WINDOW_S": "0.2",
                      "SENTRI_SHUTDOWN_PUBLISH_WAIT_S": "0.5", "SENTRI_DATA_DIR": str(tmp_path)},
                     session_log_dir).start()
    try:
        with database_write_lock(database_url):
            in_turn = asyncio.ensure_future(publish(serve.port, "in the turn at SIGTERM"))
            await asyncio.sleep(1.0)  # its turn began and waits for the lock
            queued = asyncio.ensure_future(publish(serve.port, "queued behind it"))
            await asyncio.sleep(0.2)
            serve.terminate()
            # Drain (0.2 s), then the wait for publishes (0.5 s): the queued one is refused.
            assert await asyncio.wait_for(queued, timeout=10) == (503, "1", SHUTTING_DOWN)
            assert not in_turn.done()
            await asyncio.sleep(0.3)
        # The lock goes: the turn commits while the instance closes its database, then it exits.
        assert await asyncio.wait_for(in_turn, timeout=10) == (504, "1", INTERRUPTED)
        exit_status = await asyncio.get_running_loop().run_in_executor(None, serve.process.wait, 10)
    finally:
        serve.stop()
    assert exit_status == 0
    assert stored_messages(context) == ["in the turn at SIGTERM"]
    entries = [json.loads(line) for line in serve.log_lines() if line.startswith("{")]
    assert {"msg": "exiting with publishes unfinished", "publishes": 1} in [
        {"msg": entry["msg"], "publishes": entry.get("publishes")} for entry in entries]
    statuses = [entry["status"] for entry in entries if entry.get("logger") == "sentri.access"]
    assert sorted(statuses) == [503, 504]
