"""Logs: one line per stream opened and closed, JSON in the Node field names, never a secret."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest

from sentri.hub import Hub
from sentri.logs import JsonFormatter, PlainFormatter, configure_logging
from sentri.redact import REDACTED, redact
from sentri.stream import EventStream
from sentri.streamlog import StreamLogObserver

from .logcheck import root_logging_restored
from .logsweep import find_secrets, remember_secret
from .services import wait_until
from .sseclient import open_request


def stream_records(caplog):
    return [record for record in caplog.records if record.name == "sentri.streams"]


@pytest.mark.gen_test
async def test_a_stream_logs_one_line_when_opened_and_one_when_closed(port, world, context, caplog):
    caplog.set_level(logging.INFO, logger="sentri.streams")
    response = await open_request(port, world.events_path())
    assert (await response.next_event())["type"] == "snapshot"
    response.close()
    await wait_until(lambda: context.hub.stream_count == 0, what="the stream released")
    opened, closed = stream_records(caplog)
    assert (opened.getMessage(), opened.fields) == (
        "stream opened", {"runId": "RUN-1", "workspaceId": "WS-1", "ip": "127.0.0.1"})
    assert closed.getMessage() == "stream closed"
    duration = closed.fields.pop("durationMs")
    assert isinstance(duration, int) and 0 <= duration < 5000
    assert closed.fields == {"runId": "RUN-1", "workspaceId": "WS-1", "ip": "127.0.0.1", "reason": "client_gone"}


@pytest.mark.gen_test
async def test_a_refused_stream_logs_no_stream_line(port, world, caplog):
    caplog.set_level(logging.INFO, logger="sentri.streams")
    response = await open_request(port, world.events_path(run_id="RUN-404"))
    assert response.status == 404
    await response.read_json()
    assert stream_records(caplog) == []


def test_json_lines_use_the_node_backends_field_names():
    record = logging.LogRecord("sentri.streams", logging.INFO, __file__, 1, "stream closed", (), None)
    record.created = 1767225600.25  # 2026-01-01T00:00:00.250Z
    record.msecs = 250
    record.fields = {"runId": "RUN-1", "workspaceId": "WS-1", "ip": "203.0.113.7", "durationMs": 12,
                     "reason": "done"}
    # Node's fields first, in Node's order (ts, level, runId, msg), then this project's.
    assert JsonFormatter().format(record) == (
        '{"ts":"2026-01-01T00:00:00.250Z","level":"info","runId":"RUN-1","msg":"stream closed",'
        '"logger":"sentri.streams","workspaceId":"WS-1","ip":"203.0.113.7","durationMs":12,"reason":"done"}')


@pytest.mark.parametrize("fields", [None, {}, {"runId": None, "path": "/healthz"}])
def test_a_json_line_without_a_run_leaves_run_id_out_as_node_does(fields):
    record = logging.LogRecord("sentri.access", logging.WARNING, __file__, 1, "GET %s %d", ("/healthz", 200), None)
    record.created = 1767225600.0
    record.msecs = 0
    if fields is not None:
        record.fields = fields
    entry = json.loads(JsonFormatter().format(record))
    assert list(entry)[:3] == ["ts", "level", "msg"]
    assert "runId" not in entry and "time" not in entry
    assert entry["ts"] == "2026-01-01T00:00:00.000Z"
    assert entry["level"] == "warn"
    assert entry["msg"] == "GET /healthz 200"


def test_with_log_json_a_stream_line_starts_with_nodes_ts_level_run_id_msg():
    out = io.StringIO()
    stream = EventStream(Hub(1.0, 10, 1 << 20), "RUN-1", client_ip="10.0.0.1")
    stream.workspace_id = "WS-1"
    with root_logging_restored():
        configure_logging("info", True, stream=out)
        StreamLogObserver().stream_opened(stream)
    line = json.loads(out.getvalue())
    assert list(line) == ["ts", "level", "runId", "msg", "logger", "workspaceId", "ip"]
    assert (line["level"], line["runId"], line["msg"]) == ("info", "RUN-1", "stream opened")


def test_a_records_own_fields_never_replace_nodes():
    record = logging.LogRecord("sentri.streams", logging.ERROR, __file__, 1, "boom", (), None)
    record.fields = {"ts": "x", "level": "x", "msg": "x", "runId": "RUN-7", "reason": "y"}
    entry = json.loads(JsonFormatter().format(record))
    assert list(entry) == ["ts", "level", "runId", "msg", "logger", "reason"]
    assert (entry["level"], entry["runId"], entry["msg"]) == ("error", "RUN-7", "boom")


# Logged on purpose below (scrubbed); remembered so the session sweep checks it never got out.
JWT = remember_secret("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJVU1ItMSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ")


@pytest.mark.parametrize("text, expected", [
    ("GET /api/v1/runs/RUN-1/events?token=abc.def.ghi HTTP/1.1",
     f"GET /api/v1/runs/RUN-1/events?token={REDACTED} HTTP/1.1"),
    ("/shots/a.png?token=mac123&exp=1767225600000", f"/shots/a.png?token={REDACTED}&exp=1767225600000"),
    ("Authorization: Bearer s3cr3t-value", f"Authorization: Bearer {REDACTED}"),
    ("Cookie: access_token=abc123; theme=dark", f"Cookie: access_token={REDACTED}; theme=dark"),
    (f"bad token {JWT} seen", f"bad token {REDACTED} seen"),
    ("nothing secret here: RUN-1 done", "nothing secret here: RUN-1 done"),
])
def test_redaction_removes_tokens_cookies_and_signatures(text, expected):
    assert redact(text) == expected


def test_tornados_own_error_lines_are_scrubbed_too(caplog, expect_log):
    expect_log("tornado.application", r"^Uncaught exception GET /api/v1/runs/RUN-1/events\?token=\[redacted\] ")
    caplog.set_level(logging.ERROR, logger="tornado.application")
    logging.getLogger("tornado.application").error(
        "Uncaught exception GET /api/v1/runs/RUN-1/events?token=%s (127.0.0.1)", JWT)
    (record,) = [r for r in caplog.records if r.name == "tornado.application"]
    assert record.getMessage() == f"Uncaught exception GET /api/v1/runs/RUN-1/events?token={REDACTED} (127.0.0.1)"


def test_exception_text_is_never_formatted_only_its_type():
    try:
        raise ValueError(f"bad request /x?token={JWT}")
    except ValueError:
        record = logging.LogRecord("tornado.application", logging.ERROR, __file__, 1, "boom", (),
                                   __import__("sys").exc_info())
    assert JWT not in PlainFormatter().format(record)
    assert JWT not in JsonFormatter().format(record)
    assert json.loads(JsonFormatter().format(record))["error"] == "ValueError"


@pytest.mark.gen_test
async def test_the_access_line_of_a_request_with_a_query_token_has_the_path_only(port, world, session_log_dir):
    response = await open_request(port, world.events_path(run_id="RUN-404"))
    assert response.status == 404
    await response.read_json()
    logging.getLogger().handlers[-1].flush()
    with open(os.path.join(session_log_dir, "in-process.log"), encoding="utf-8") as handle:
        lines = [line for line in handle if "sentri.access GET /api/v1/runs/RUN-404/events 404" in line]
    assert lines, "the session capture saw the access line"
    assert all("token" not in line and world.token not in line for line in lines)


def test_the_session_sweep_finds_a_secret_in_any_log_file(tmp_path):
    (tmp_path / "clean.log").write_text("GET /api/v1/runs/RUN-1/events 200\n")
    (tmp_path / "leaky.log").write_text(f"GET /api/v1/runs/RUN-1/events?token={JWT} 200\n")
    assert find_secrets(str(tmp_path), {JWT}) == ["leaky.log: 1 secret(s)"]
