"""The HTTP around a stream: exact response head, chunked for HTTP/1.1, close-delimited for HTTP/1.0."""

from __future__ import annotations

import re
from email.utils import formatdate

import pytest

from sentri.http import http_date

from .frames import next_data
from .sseclient import open_request

DATE = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")


def assert_stream_head(response, chunked):
    assert response.status_line == b"HTTP/1.1 200 OK"
    expected = [
        ("Content-Type", "text/event-stream"),
        ("Cache-Control", "no-cache"),
        ("Connection", "keep-alive"),
        ("X-Accel-Buffering", "no"),
    ]
    names = [name for name, _ in response.header_lines]
    assert response.header_lines[:4] == expected
    assert names[4] == "Date" and DATE.fullmatch(response.header_lines[4][1])
    if chunked:
        assert response.header_lines[5:] == [("Transfer-Encoding", "chunked")]
    else:
        assert response.header_lines[5:] == []
    assert "Content-Length" not in names and "Server" not in names


@pytest.mark.gen_test
async def test_an_http_1_1_stream_has_exactly_the_node_headers_and_a_chunked_body(port, world, context):
    response = await open_request(port, world.events_path())
    assert_stream_head(response, chunked=True)
    assert response.chunked
    assert (await next_data(response)).startswith(b'data: {"type":"snapshot","run":{"id":"RUN-1",')
    context.hub.emit("RUN-1", "done", {"status": "completed"})
    assert await next_data(response) == b'data: {"type":"done","status":"completed"}\n\n'
    assert await response.server_closed()
    assert response.ended  # the body ended with the last chunk, 0\r\n\r\n, before the close


@pytest.mark.gen_test
async def test_an_http_1_0_client_gets_an_unchunked_stream_that_ends_by_closing(port, world, context):
    response = await open_request(port, world.events_path(), version="HTTP/1.0")
    assert_stream_head(response, chunked=False)
    snapshot = await next_data(response)
    assert snapshot.startswith(b'data: {"type":"snapshot","run":{"id":"RUN-1",')
    context.hub.emit("RUN-1", "log", {"message": "m"})
    assert await next_data(response) == b'data: {"type":"log","message":"m"}\n\n'
    context.hub.emit("RUN-1", "done", {"status": "aborted"})
    assert await next_data(response) == b'data: {"type":"done","status":"aborted"}\n\n'
    assert await response.server_closed()
    assert b"\r\n" not in response.body  # no chunk sizes in an HTTP/1.0 body
    assert response.body.endswith(b'data: {"type":"done","status":"aborted"}\n\n')
    assert context.hub.runs == {}


@pytest.mark.gen_test
async def test_an_http_1_0_client_of_a_finished_run_gets_snapshot_done_and_the_close(port, world, rows):
    rows.run(world.project, id="RUN-2", status="completed", passed=1, failed=0, total=1, tests=[{"id": "TC-1"}])
    response = await open_request(port, world.events_path("RUN-2"), version="HTTP/1.0")
    assert_stream_head(response, chunked=False)
    await next_data(response)
    done = b'data: {"type":"done","status":"completed","passed":1,"failed":0,"total":1,"testsGenerated":1}\n\n'
    assert await next_data(response) == done
    assert await response.server_closed()
    assert response.body.endswith(done)


@pytest.mark.gen_test
async def test_an_error_answer_is_json_with_its_length_and_no_server_header(port, world):
    response = await open_request(port, world.events_path("RUN-404"))
    await response.read_json()
    assert response.status_line == b"HTTP/1.1 404 Not Found"
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["content-length"] == str(len(b'{"error":"not found"}'))
    assert "server" not in response.headers


def test_the_date_header_is_the_http_date_of_its_second_however_often_it_is_asked():
    # http_date keeps the last value it made; every time of a second gives that second's date.
    for now in (1764500000.0, 1764500000.25, 1764500000.999, 1764500001.0, 1764499999.5, 86400.75):
        assert http_date(now) == formatdate(now, usegmt=True)
