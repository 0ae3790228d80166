"""Producers outside the server: ``sentri.worker_publisher`` and ``sentri emit`` write the relay
message (docs/relay.md §2) that every instance relays, with only ``REDIS_URL`` to go on."""

from __future__ import annotations

import json
import re

import pytest

from sentri import worker_publisher
from sentri.models import Run, RunLog
from sentri.worker_publisher import RunEventPublisher

from .console import sentri_emit
from .redis_server import redis_server  # noqa: F401 (fixture)
from .sseclient import open_request
from .test_relay import without_id


def default_publisher_on(redis_server, monkeypatch):  # noqa: F811
    """``worker_publisher.emit`` makes its process-wide publisher afresh, from REDIS_URL pointing here."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setattr(worker_publisher, "_default", None)


def test_a_worker_publishes_the_node_message_format_with_its_own_origin(redis_server):  # noqa: F811
    subscriber = redis_server.subscriber("sentri:run:RUN-9")
    publisher = RunEventPublisher(redis_server.url, origin="worker_7")
    assert publisher.emit("RUN-9", "result", {"result": {"id": "TC-1", "name": "Übersicht"}, "_origin": "x"}) == 1
    publisher.close()
    message = subscriber.get_message(timeout=5)
    assert message["channel"] == b"sentri:run:RUN-9"
    # "_origin" is "<worker>|<event id>": the id the script gave the event (sentri.redis_history).
    expected = '{"type":"result","result":{"id":"TC-1","name":"Übersicht"},"_origin":"worker_7\\|([0-9]+-[0-9]+)"}'
    match = re.fullmatch(expected.encode(), message["data"])
    assert match is not None, message["data"]
    assert redis_server.client().xrange("sentri:events:RUN-9") == [
        (match.group(1), {b"d": b'{"type":"result","result":{"id":"TC-1","name":"\xc3\x9cbersicht"}}',
                          b"o": b"worker_7", b"e": b"0"})]
    subscriber.close()


def test_emit_uses_redis_url_from_the_environment_and_a_unique_worker_origin(redis_server, monkeypatch):  # noqa: F811
    default_publisher_on(redis_server, monkeypatch)
    subscriber = redis_server.subscriber("sentri:run:RUN-9")
    assert worker_publisher.emit("RUN-9", "log", {"message": "hi"}) == 1
    data = subscriber.get_message(timeout=5)["data"]
    assert data.startswith(b'{"type":"log","message":"hi","_origin":"worker_')
    worker_publisher._default.close()
    subscriber.close()


def test_the_command_line_publishes_an_event_and_says_how_many_instances_listen(redis_server):  # noqa: F811
    subscriber = redis_server.subscriber("sentri:run:RUN-9")
    result = sentri_emit("RUN-9", "done", '{"status":"completed","passed":2}', redis_url=redis_server.url)
    assert (result.returncode, result.stderr) == (0, b"")
    printed = re.fullmatch(rb"published done on run RUN-9 as ([0-9]+-[0-9]+); 1 instance\(s\) listening\n",
                           result.stdout)
    assert printed is not None, result.stdout
    data = subscriber.get_message(timeout=5)["data"]
    assert data.startswith(b'{"type":"done","status":"completed","passed":2,"_origin":"worker_')
    subscriber.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("RUN-9", "log", "{not json"), b"sentri: JSON: the payload is not valid JSON\n"),
        (("RUN-9", "log", "[1]"), b"sentri: JSON: the payload must be a JSON object\n"),
        (("RUN-9", "Log\n", "{}"),
         b"sentri: TYPE must be a short lowercase word (a-z, 0-9, _; at most 32 characters)\n"),
    ],
)
def test_the_command_line_refuses_bad_input_in_one_line_with_status_2(redis_server, args, message):  # noqa: F811
    result = sentri_emit(*args, redis_url=redis_server.url)
    assert (result.returncode, result.stdout, result.stderr) == (2, b"", message)


def test_the_command_line_needs_redis_url():
    result = sentri_emit("RUN-9", "log", "{}")
    assert (result.returncode, result.stderr) == (2, b"sentri: REDIS_URL is not set: there is no relay to publish to\n")


def test_the_command_line_reports_an_unreachable_redis_in_one_line_without_the_password(redis_server):  # noqa: F811
    url = f"redis://:s3cret-pw@127.0.0.1:{redis_server.port}/0"
    redis_server.stop()
    result = sentri_emit("RUN-9", "log", "{}", redis_url=url)
    assert (result.returncode, result.stdout, result.stderr) == (
        1, b"", b"sentri: cannot publish to redis (ConnectionError)\n")


class TestIntoAServer:
    @pytest.fixture
    def settings(self, settings, redis_server):  # noqa: F811
        return settings.replace(redis_url=redis_server.url, retry_ms=0)

    @pytest.mark.gen_test(timeout=30)
    async def test_an_event_from_a_worker_reaches_a_client_of_the_server(self, port, context, world, redis_server):  # noqa: F811
        response = await open_request(port, world.events_path())
        assert (await response.next_event())["type"] == "snapshot"
        publisher = RunEventPublisher(redis_server.url)
        assert publisher.emit("RUN-1", "llm_token", {"token": "Hel"}) == 1
        publisher.close()
        assert without_id(await response.next_frame()) == b'data: {"type":"llm_token","token":"Hel"}\n\n'


def test_a_publisher_needs_a_redis_url():
    with pytest.raises(ValueError, match=r"\AREDIS_URL is not set: there is no relay to publish to\Z"):
        RunEventPublisher("")


def test_the_plain_message_of_a_publisher_ends_with_its_origin_and_ignores_a_payload_origin():
    publisher = RunEventPublisher("redis://127.0.0.1:1/0", origin="worker_7")  # connects on first command only
    try:
        assert publisher.message("log", {"message": "hi", "_origin": "forged"}) == (
            b'{"type":"log","message":"hi","_origin":"worker_7"}')
        assert publisher.message("ping") == b'{"type":"ping","_origin":"worker_7"}'
    finally:
        publisher.close()


def test_emit_reuses_one_publisher_per_process(redis_server, monkeypatch):  # noqa: F811
    default_publisher_on(redis_server, monkeypatch)
    subscriber = redis_server.subscriber("sentri:run:RUN-9")
    try:
        assert worker_publisher.emit("RUN-9", "log", {"message": "one"}) == 1
        first = worker_publisher._default
        assert worker_publisher.emit("RUN-9", "log", {"message": "two"}) == 1
        assert worker_publisher._default is first
        origins = [json.loads(subscriber.get_message(timeout=5)["data"])["_origin"].split("|")[0] for _ in range(2)]
        assert origins == [first.origin, first.origin]
    finally:
        worker_publisher._default.close()
        subscriber.close()


def test_with_a_database_an_event_other_than_log_or_done_is_published_and_not_stored(
        settings, context, world, redis_server):  # noqa: F811
    with context.store.database.connection_context():
        run_before = Run.select().where(Run.id == "RUN-1").dicts().first()
    result = sentri_emit("RUN-1", "result", '{"result":{"id":"TC-1","status":"passed"}}',
                     redis_url=redis_server.url, database_url=settings.database_url)
    assert (result.returncode, result.stderr) == (0, b"")
    assert re.fullmatch(rb"published result on run RUN-1 as [0-9]+-[0-9]+; 0 instance\(s\) listening\n",
                        result.stdout), result.stdout
    client = redis_server.client()
    [(_, fields)] = client.xrange("sentri:events:RUN-1")
    client.close()
    assert fields[b"d"] == b'{"type":"result","result":{"id":"TC-1","status":"passed"}}'
    with context.store.database.connection_context():
        assert RunLog.select().where(RunLog.runId == "RUN-1").count() == 0
        assert Run.select().where(Run.id == "RUN-1").dicts().first() == run_before


def test_a_database_that_cannot_be_opened_is_reported_in_one_line_without_the_password(redis_server):  # noqa: F811
    url = "postgresql://postgres:s3cret-pw@127.0.0.1:5432/sentri_no_such_database"
    result = sentri_emit("RUN-1", "log", '{"message":"x"}', redis_url=redis_server.url, database_url=url)
    assert (result.returncode, result.stdout) == (2, b"")
    assert re.fullmatch(rb'sentri: DATABASE_URL: cannot open the database \(OperationalError: [^\n]*'
                        rb'database "sentri_no_such_database" does not exist\)\n', result.stderr), result.stderr
    assert b"s3cret-pw" not in result.stderr
    client = redis_server.client()
    assert client.exists("sentri:events:RUN-1") == 0
    client.close()
