"""The publish route's own delegate answers exactly as ``PublishEventHandler`` alone did.

The same raw requests go to two servers on one context: the application (``make_app``, whose
POST route is ``handlers.publish_fast.PublishRoute``) and an application of the handler alone
(``handlers.publish_api.default_handlers``, the route before the fast path). Their answers must
be the same bytes (but the ``Date`` and, for a 202, the event's id), with the same access lines
and warnings; and the fast path must have served the 202s and the body errors without
``PublishEventHandler``, while the head refusals went to it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Iterator, List

import pytest
import tornado.httpserver
import tornado.testing
import tornado.web

from handlers import publish_api
from handlers.base import NotFoundHandler
from sentri import group_commit
from sentri.logs import log_request
from sentri.models import RunLog

from .access_lines import AccessLines

PUBLISH_TOKEN = "publish-secret-0123456789"
PATH = "/api/v1/runs/RUN-1/events"
ORIGIN = "https://app.example.test"
DATE = re.compile(rb"\r\nDate: [^\r]+\r\n")
ID = re.compile(rb'"(id|ids)":(\[[^\]]*\]|"[^"]*")')


@pytest.fixture
def settings(settings):
    return settings.replace(publish_token=PUBLISH_TOKEN, publish_max_bytes=1024, retry_ms=0, cors_origin=[ORIGIN])


@pytest.fixture
def handler_port(context, io_loop) -> Iterator[int]:
    """A server whose POST route is ``PublishEventHandler`` alone, as before the fast path."""
    application = tornado.web.Application(
        [(pattern, handler, {"context": context}) for pattern, handler in publish_api.default_handlers],
        default_handler_class=NotFoundHandler, default_handler_args={"context": context},
        log_function=log_request, serve_traceback=False, compress_response=False)
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(application, xheaders=True, max_header_size=16 * 1024)
    server.add_sockets([sock])
    yield port
    server.stop()
    io_loop.run_sync(server.close_all_connections)


@pytest.fixture
def handler_runs(monkeypatch) -> List[str]:
    """The paths PublishEventHandler prepared (it runs for every request it serves)."""
    seen: List[str] = []
    prepare = publish_api.PublishEventHandler.prepare

    def counted(self: Any) -> None:
        seen.append(self.request.path)
        prepare(self)

    monkeypatch.setattr(publish_api.PublishEventHandler, "prepare", counted)
    return seen


async def exchange(port: int, request: bytes) -> bytes:
    """Send one raw request (``Connection: close``) and read the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


def request(body: bytes = b'{"type":"log","message":"hello"}', path: str = PATH, token: str = PUBLISH_TOKEN,
            headers: str = "", length: bool = True) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + headers + "\r\n").encode() + body


def normalised(answer: bytes) -> bytes:
    answer = DATE.sub(b"\r\nDate: <date>\r\n", answer)
    answer = ID.sub(rb'"\1":<id>', answer)
    return re.sub(rb"Content-Length: \d+", b"Content-Length: <n>", answer) if b" 202 " in answer else answer


async def both(port: int, handler_port: int, raw: bytes, access_lines: AccessLines) -> bytes:
    """The fast path's answer, checked against the handler's (bytes and access line); returns it."""
    fast = await exchange(port, raw)
    fast_lines = list(access_lines.lines)
    access_lines.lines.clear()
    handler = await exchange(handler_port, raw)
    assert normalised(fast) == normalised(handler)
    assert fast_lines == access_lines.lines
    access_lines.lines.clear()
    return fast


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


@pytest.mark.gen_test
@pytest.mark.parametrize("origin", ["", f"Origin: {ORIGIN}\r\n", "Origin: https://elsewhere.test\r\n"])
async def test_an_accepted_publish_is_the_handlers_202_and_is_stored(port, handler_port, world, context,
                                                                      handler_runs, access_lines, origin):
    answer = await both(port, handler_port, request(headers=origin), access_lines)
    assert status_of(answer) == 202
    head = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert head[0] == b"HTTP/1.1 202 Accepted"
    names = [line.split(b":", 1)[0] for line in head[1:]]
    cors = [b"Access-Control-Allow-Origin", b"Access-Control-Allow-Credentials", b"Vary"] if ORIGIN in origin \
        else [b"Vary"]
    assert names == [b"Content-Type", b"Date", *cors, b"Content-Length", b"Connection"]
    assert re.fullmatch(rb'\{"id":"[^"]+"\}', body_of(answer))
    assert handler_runs == [PATH]  # only the handler server's request went through the handler
    with context.store.database.connection_context():
        assert RunLog.select().where(RunLog.runId == "RUN-1").count() == 2


@pytest.mark.gen_test
async def test_a_batch_is_answered_as_by_the_handler(port, handler_port, world, handler_runs, access_lines):
    array = await both(port, handler_port, request(b'[{"type":"log","message":"a"},{"type":"llm_token","t":1}]'),
                       access_lines)
    assert status_of(array) == 202 and body_of(array).startswith(b'{"ids":["')
    ndjson = await both(port, handler_port, request(b'{"type":"log","message":"a"}\n\n{"type":"log","message":"b"}\n',
                                                    headers="Content-Type: application/x-ndjson\r\n"), access_lines)
    assert status_of(ndjson) == 202 and body_of(ndjson).count(b'"') == 6
    assert handler_runs == [PATH, PATH]


BODY_ERRORS = [
    (b"{not json", 400, b'{"error":"body is not valid JSON"}'),
    (b"\xff\xfe", 400, b'{"error":"body is not valid JSON"}'),
    (b"", 400, b'{"error":"body is not valid JSON"}'),
    (b"[]", 400, b'{"error":"a batch needs at least one event"}'),
    (b"null", 400, b'{"error":"body must be a JSON object"}'),
    (b"[" * 70 + b"]" * 70, 400, b'{"error":"body must not nest arrays and objects more than 64 levels deep"}'),
    (b'{"type":"Log"}', 400,
     b'{"error":"type must be a short lowercase word (a-z, 0-9, _; at most 32 characters)"}'),
    (b'{"type":"log"}', 400, b'{"error":"a log event needs a string message"}'),
    (b'{"type":"log","message":"x","level":"fatal"}', 400, b'{"error":"level must be one of: info, warn, error"}'),
    (b'[{"type":"log","message":"a"},{"type":"log"}]', 400,
     b'{"error":"a log event needs a string message","index":1}'),
    (b'{"type":"done","status":"running"}', 400,
     b'{"error":"a done event needs a status: completed, completed_empty, failed, aborted, interrupted"}'),
]


@pytest.mark.gen_test
@pytest.mark.parametrize("body, status, error", BODY_ERRORS)
async def test_a_bad_body_is_refused_as_by_the_handler_without_it(port, handler_port, world, handler_runs,
                                                                   access_lines, body, status, error):
    answer = await both(port, handler_port, request(body), access_lines)
    assert (status_of(answer), body_of(answer)) == (status, error)
    assert handler_runs == [PATH]


@pytest.mark.gen_test
async def test_an_unknown_or_overlong_run_is_404_as_by_the_handler(port, handler_port, world, handler_runs,
                                                                    access_lines):
    for path in ("/api/v1/runs/RUN-404/events", "/api/v1/runs/" + "R" * 129 + "/events"):
        answer = await both(port, handler_port, request(path=path), access_lines)
        assert (status_of(answer), body_of(answer)) == (404, b'{"error":"run not found"}')
    assert len(handler_runs) == 2


HEAD_REFUSALS = [
    (request(token=""), 401, b'{"error":"publish token required"}'),
    (request(token="wrong"), 401, b'{"error":"invalid publish token"}'),
    (request(headers="Content-Length: 5000\r\n", length=False), 413,
     b'{"error":"request body too large","maxBytes":1024}'),
    (request(headers="Content-Length: 12x\r\n", length=False), 413,
     b'{"error":"request body too large","maxBytes":1024}'),
    (request(length=False, headers="Transfer-Encoding: chunked\r\n", body=b"1e\r\n" + b'{"type":"log","message":"ch"}'
             + b"\n\r\n0\r\n\r\n"), 202, None),
]


@pytest.mark.gen_test
@pytest.mark.parametrize("raw, status, error", HEAD_REFUSALS)
async def test_a_request_refused_by_its_head_or_not_declaring_its_size_goes_to_the_handler(
        port, handler_port, world, handler_runs, access_lines, raw, status, error):
    answer = await both(port, handler_port, raw, access_lines)
    assert status_of(answer) == status
    if error is not None:
        assert body_of(answer) == error
    assert len(handler_runs) == 2  # both servers' requests


@pytest.mark.gen_test
async def test_a_run_id_that_is_not_utf8_is_the_handlers_400(port, handler_port, world, handler_runs, access_lines,
                                                            expect_log):
    with expect_log("tornado.general", r"400 POST /api/v1/runs/%FF/events \(127\.0\.0\.1\): Invalid unicode") as warned:
        answer = await both(port, handler_port, request(path="/api/v1/runs/%FF/events"), access_lines)
    assert warned.matched == 2
    assert (status_of(answer), body_of(answer)) == (400, b'{"error":"bad request"}')
    assert handler_runs == []  # Tornado refuses the path argument before the handler's prepare()


@pytest.mark.gen_test
async def test_without_a_token_configured_both_answer_404(port, handler_port, world, context, handler_runs,
                                                         access_lines):
    context.settings = context.settings.replace(publish_token="")
    answer = await both(port, handler_port, request(), access_lines)
    assert (status_of(answer), body_of(answer)) == (404, b'{"error":"not found"}')


@pytest.mark.gen_test
async def test_a_stopping_instance_answers_503_as_the_handler(port, handler_port, world, context, handler_runs,
                                                              access_lines, expect_log):
    expect_log("sentri.access", r"POST /api/v1/runs/RUN-1/events 503$", level=logging.ERROR)
    await context.publisher.committer.close(0)
    answer = await both(port, handler_port, request(), access_lines)
    assert status_of(answer) == 503
    assert b"\r\nRetry-After: 1\r\n" in answer
    assert body_of(answer) == b'{"error":"server is shutting down","retryAfter":1}'


@pytest.mark.gen_test
async def test_a_failing_database_is_503_with_the_handlers_warning(port, handler_port, world, handler_runs,
                                                                  access_lines, monkeypatch, expect_log):
    def refuse(*args: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(group_commit, "commit_writes", refuse)
    expect_log("sentri.access", r"POST /api/v1/runs/RUN-1/events 503$", level=logging.ERROR)
    with expect_log("tornado.general", r"503 POST /api/v1/runs/RUN-1/events \(127\.0\.0\.1\): publish failed: "
                    r"RuntimeError$") as warned:
        answer = await both(port, handler_port, request(), access_lines)
    assert warned.matched == 2  # one line from each server, the same
    assert status_of(answer) == 503
    assert b"\r\nRetry-After: 1\r\n" in answer
    assert body_of(answer) == b'{"error":"database unavailable","retryAfter":1}'
    assert b"disk on fire" not in answer
