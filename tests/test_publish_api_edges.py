"""The publish endpoint's own body bound, for connections that do not enforce one.

Tornado's HTTP/1 connection takes the bound from ``prepare`` (``set_max_body_size``) and cuts
a longer body itself, so over a socket the handler's own count never trips. A connection
without that method (another ``HTTPConnection`` implementation) relies on the handler: these
tests drive the handler through Tornado's own request delegate with such a connection.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, List, Optional

import pytest
from tornado.concurrent import Future
from tornado.httpclient import AsyncHTTPClient
from tornado.httputil import HTTPHeaders, RequestStartLine, ResponseStartLine

from handlers.publish_api import MethodAndPath

from .frames import next_data
from .sseclient import open_request
from .test_publish_api import PATH, PUBLISH_TOKEN, post


@pytest.fixture
def settings(settings):
    return settings.replace(publish_token=PUBLISH_TOKEN, publish_max_bytes=1024, retry_ms=0)


class BoundlessConnection:
    """An ``HTTPConnection`` with no ``set_max_body_size``; it records the response."""

    def __init__(self) -> None:
        self.start_line: Optional[ResponseStartLine] = None
        self.headers: Optional[HTTPHeaders] = None
        self.body: List[bytes] = []
        self.finished = asyncio.Event()

    def set_close_callback(self, callback: Any) -> None:
        pass

    def write_headers(self, start_line: ResponseStartLine, headers: HTTPHeaders,
                      chunk: Optional[bytes] = None) -> Future:
        self.start_line, self.headers = start_line, headers
        return self.write(chunk or b"")

    def write(self, chunk: bytes) -> Future:
        self.body.append(chunk)
        done: Future = Future()
        done.set_result(None)
        return done

    def finish(self) -> None:
        self.finished.set()


async def publish_in_chunks(app, chunks: List[bytes]) -> BoundlessConnection:  # type: ignore[no-untyped-def]
    connection = BoundlessConnection()
    delegate = app.start_request(None, connection)
    headers = HTTPHeaders({"Host": "127.0.0.1", "Authorization": f"Bearer {PUBLISH_TOKEN}",
                           "Transfer-Encoding": "chunked"})
    await delegate.headers_received(RequestStartLine("POST", PATH, "HTTP/1.1"), headers)
    for chunk in chunks:
        pending = delegate.data_received(chunk)
        if pending is not None:
            await pending
    delegate.finish()
    await asyncio.wait_for(connection.finished.wait(), 5)  # post() answers on the loop
    return connection


@pytest.mark.gen_test
async def test_a_body_growing_past_the_bound_on_a_boundless_connection_is_413_and_not_kept(app, world, context):
    published = []
    context.hub.observer.event_emitted = published.append
    piece = b" " * 600
    connection = await publish_in_chunks(app, [b'{"type":"log","message":"x"}', piece, piece, b"}"])
    assert connection.start_line is not None
    assert connection.start_line.code == 413
    assert json.loads(b"".join(connection.body)) == {"error": "request body too large", "maxBytes": 1024}
    assert published == []


@pytest.mark.gen_test
async def test_a_body_within_the_bound_on_a_boundless_connection_is_published(app, world, context):
    connection = await publish_in_chunks(app, [b'{"type":"log",', b'"message":"in two chunks"}'])
    assert connection.start_line is not None and connection.start_line.code == 202
    assert list(json.loads(b"".join(connection.body))) == ["id"]


@pytest.mark.gen_test
async def test_without_a_publisher_the_endpoint_is_404_even_with_a_token(port, world, context):
    context.publisher = None
    assert await post(port, {"type": "log", "message": "x"}) == (404, {"error": "not found"})


def test_the_publish_route_reverses_to_its_path():
    route = MethodAndPath("POST", r"/api/v1/runs/([^/]+)/events$")
    assert route.reverse("RUN-7") == "/api/v1/runs/RUN-7/events"


@pytest.mark.gen_test
async def test_a_log_the_database_cannot_store_is_503_and_reaches_no_listener(port, world, context, expect_log):
    expect_log("sentri.access", r"POST /api/v1/runs/RUN-1/events 503$")
    expect_log("tornado.general",
               r"503 POST /api/v1/runs/RUN-1/events .*publish failed: (OperationalError|ProgrammingError)$")
    stream = await open_request(port, world.events_path())
    assert (await stream.next_event())["type"] == "snapshot"
    with context.store.database.connection_context():  # a real failure: the table the write needs is gone
        context.store.database.execute_sql("DROP TABLE run_logs")
    status, body = await post(port, {"type": "log", "message": "lost?"})
    assert (status, body) == (503, {"error": "database unavailable", "retryAfter": 1})
    context.hub.emit("RUN-1", "llm_token", {"token": "next"})
    assert await next_data(stream) == b'data: {"type":"llm_token","token":"next"}\n\n'  # not the log


@pytest.mark.gen_test
async def test_other_methods_on_the_events_path_are_405_and_other_paths_404(port):
    async def answer(method, path):
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{path}", method=method,
                                                 body=b"{}" if method in ("PUT", "PATCH", "POST") else None,
                                                 raise_error=False)
        return response.code, response.body

    for method in ("PUT", "DELETE", "PATCH"):
        assert await answer(method, PATH) == (405, b'{"error":"method not allowed"}'), method
    for method, path in (("POST", PATH + "/extra"), ("POST", "/api/v1/runs//events"), ("GET", PATH + "/extra")):
        assert await answer(method, path) == (404, b'{"error":"not found"}'), (method, path)
