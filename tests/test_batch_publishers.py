"""The Python worker publisher's batches and ``sentri emit --ndjson``: checked first, stored in
one transaction, sent in one Redis round trip, in order; the worker's window flushes on close."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from sentri.event_intake import InvalidEventError
from sentri.models import RunLog
from sentri.worker_publisher import RunEventPublisher

from .redis_server import redis_server  # noqa: F401 (fixture)


def history(redis_server):  # noqa: F811
    with redis_server.client() as client:
        return [json.loads(fields[b"d"]) for _, fields in client.xrange("sentri:events:RUN-1")]


def stored(context):
    with context.store.database.connection_context():
        return list(RunLog.select(RunLog.seq, RunLog.level, RunLog.message).where(RunLog.runId == "RUN-1")
                    .order_by(RunLog.seq).tuples())


def ndjson(*events):
    return "".join(json.dumps(event) + "\n" for event in events).encode()


def run_emit(*args, database_url, redis_url, stdin=None):
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "sentri.cli", "emit", "RUN-1", *args], env=env, input=stdin,
                          capture_output=True, timeout=30, check=False)


def test_publish_many_stores_in_order_and_sends_every_event_with_its_id(settings, context, world,
                                                                        redis_server):  # noqa: F811
    publisher = RunEventPublisher(redis_server.url, database_url=settings.database_url)
    try:
        results = publisher.publish_many([("RUN-1", "log", {"message": f"line {n}", "level": "warn"})
                                          for n in range(3)] + [("RUN-1", "llm_token", {"token": "t"})])
    finally:
        publisher.close()
    assert [receivers for _, receivers in results] == [0, 0, 0, 0]
    assert len({event_id for event_id, _ in results}) == 4
    sent = history(redis_server)
    assert [event["type"] for event in sent] == ["log", "log", "log", "llm_token"]
    assert "level" not in sent[0]
    assert [(seq, level, message) for seq, level, message in stored(context)] == [
        (n + 1, "warn", sent[n]["message"]) for n in range(3)]


def test_one_bad_event_refuses_the_whole_publish_many(settings, context, world, redis_server):  # noqa: F811
    publisher = RunEventPublisher(redis_server.url, database_url=settings.database_url)
    try:
        with pytest.raises(InvalidEventError, match="level must be one of"):
            publisher.publish_many([("RUN-1", "log", {"message": "ok"}),
                                    ("RUN-1", "log", {"message": "x", "level": "loud"})])
    finally:
        publisher.close()
    assert history(redis_server) == [] and stored(context) == []


def test_a_batching_worker_sends_its_window_together_and_flushes_on_close(settings, context, world,
                                                                           redis_server):  # noqa: F811
    publisher = RunEventPublisher(redis_server.url, database_url=settings.database_url, batch_window_s=30,
                                  batch_max_events=5)
    try:
        for n in range(7):
            assert publisher.emit("RUN-1", "log", {"message": f"line {n}"}) == 0
        # The first five filled a batch and went at once; two wait for the window.
        assert len(history(redis_server)) == 5 and len(stored(context)) == 5
        with pytest.raises(InvalidEventError):  # checked when emitted, not when sent
            publisher.emit("RUN-1", "done", {"status": "running"})
    finally:
        publisher.close()
    assert [event["message"].split("] ", 1)[1] for event in history(redis_server)] == [f"line {n}" for n in range(7)]
    assert [seq for seq, _, _ in stored(context)] == list(range(1, 8))


def test_a_batching_worker_sends_when_its_window_passes(redis_server):  # noqa: F811
    publisher = RunEventPublisher(redis_server.url, batch_window_s=0.05)
    try:
        publisher.emit("RUN-1", "llm_token", {"token": "a"})
        publisher.emit("RUN-1", "llm_token", {"token": "b"})
        deadline = time.monotonic() + 5
        while len(history(redis_server)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [event["token"] for event in history(redis_server)] == ["a", "b"]
    finally:
        publisher.close()


def test_a_worker_that_exits_without_close_still_sends_its_window(redis_server):  # noqa: F811
    script = ("import sys; from sentri.worker_publisher import RunEventPublisher\n"
              "p = RunEventPublisher(sys.argv[1], batch_window_s=60)\n"
              "for n in range(3): p.emit('RUN-1', 'llm_token', {'token': str(n)})\n")
    subprocess.run([sys.executable, "-c", script, redis_server.url], check=True, timeout=30)
    assert [event["token"] for event in history(redis_server)] == ["0", "1", "2"]


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_sentri_emit_ndjson_publishes_every_line_in_order(settings, context, world, redis_server,  # noqa: F811
                                                          tmp_path, source):
    body = ndjson({"type": "log", "message": "one", "level": "error"}, {"type": "llm_token", "token": "t"},
                  {"type": "log", "message": "two"}) + b"\n"
    if source == "file":
        path = tmp_path / "events.ndjson"
        path.write_bytes(body)
        result = run_emit("--ndjson", str(path), database_url=settings.database_url, redis_url=redis_server.url)
    else:
        result = run_emit("--ndjson", "-", database_url=settings.database_url, redis_url=redis_server.url,
                          stdin=body)
    assert (result.returncode, result.stderr) == (0, b""), result.stderr
    lines = result.stdout.decode().splitlines()
    assert [line.split(" as ")[0] for line in lines] == [
        "published log on run RUN-1", "published llm_token on run RUN-1", "published log on run RUN-1"]
    assert [event["type"] for event in history(redis_server)] == ["log", "llm_token", "log"]
    assert [(seq, level) for seq, level, _ in stored(context)] == [(1, "error"), (2, "info")]


@pytest.mark.parametrize("line, error", [
    (b"{not json", b"sentri: line 2: the payload is not valid JSON\n"),
    (b'{"message":"no type"}', b"sentri: line 2: type must be a short lowercase word (a-z, 0-9, _; at most 32 "
                               b"characters)\n"),
    (b'{"type":"log","message":"x","level":"loud"}', b"sentri: line 2: level must be one of: info, warn, error\n"),
])
def test_sentri_emit_ndjson_publishes_nothing_when_a_line_is_bad(settings, context, world, redis_server,  # noqa: F811
                                                                 line, error):
    body = ndjson({"type": "log", "message": "fine"}) + line + b"\n"
    result = run_emit("--ndjson", "-", database_url=settings.database_url, redis_url=redis_server.url, stdin=body)
    assert (result.returncode, result.stdout, result.stderr) == (2, b"", error)
    assert history(redis_server) == [] and stored(context) == []
