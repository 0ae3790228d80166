"""``sentri emit`` with DATABASE_URL stores a log in run_logs (and a done on the run row) before
it publishes, through the same id script as the server; without it, it only publishes."""

from __future__ import annotations

import json
import re

from sentri.models import Run, RunLog

from .console import sentri_emit
from .redis_server import redis_server  # noqa: F401 (fixture)

STAMPED = re.compile(r"\[\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\] built the cart")


def emit(redis_url, *args, database_url=None):
    return sentri_emit("RUN-1", *args, redis_url=redis_url, database_url=database_url)


def history(redis_server):  # noqa: F811
    with redis_server.client() as client:
        rows = client.xrange("sentri:events:RUN-1")
        return [(event_id.decode(), json.loads(fields[b"d"])) for event_id, fields in rows]


def test_with_a_database_a_log_is_stamped_stored_and_then_published_with_its_id(
        settings, context, world, redis_server):  # noqa: F811
    result = emit(redis_server.url, "log", '{"message":"built the cart","level":"warn"}',
                  database_url=settings.database_url)
    assert (result.returncode, result.stderr) == (0, b"")
    printed = re.fullmatch(rb"published log on run RUN-1 as ([0-9]+-[0-9]+); 0 instance\(s\) listening\n",
                           result.stdout)
    assert printed is not None, result.stdout
    [(event_id, event)] = history(redis_server)
    assert event_id == printed.group(1).decode()
    assert set(event) == {"type", "message"} and STAMPED.fullmatch(event["message"])
    with context.store.database.connection_context():
        stored = list(RunLog.select(RunLog.seq, RunLog.level, RunLog.message).where(RunLog.runId == "RUN-1").tuples())
    assert stored == [(1, "warn", event["message"])]

    done = emit(redis_server.url, "done", '{"status":"failed","passed":1,"failed":2,"total":3}',
                database_url=settings.database_url)
    assert done.returncode == 0, done.stderr
    with context.store.database.connection_context():
        row = Run.select(Run.status, Run.passed, Run.failed, Run.total).where(Run.id == "RUN-1").tuples().first()
    assert row == ("failed", 1, 2, 3)


def test_with_a_database_an_invalid_log_is_refused_and_neither_stored_nor_published(
        settings, context, world, redis_server):  # noqa: F811
    result = emit(redis_server.url, "log", '{"message":"x","level":"loud"}', database_url=settings.database_url)
    assert (result.returncode, result.stdout, result.stderr) == (
        2, b"", b"sentri: level must be one of: info, warn, error\n")
    assert history(redis_server) == []


def test_without_a_database_the_worker_only_publishes(settings, context, world, redis_server):  # noqa: F811
    result = emit(redis_server.url, "log", '{"message":"built the cart"}')
    assert result.returncode == 0, result.stderr
    assert [event for _, event in history(redis_server)] == [{"type": "log", "message": "built the cart"}]
    with context.store.database.connection_context():
        assert RunLog.select().count() == 0
