"""A producer's kept-alive connection, once it has published, is served by the publish route itself
(``handlers/publish_connection.py``), and answers exactly as Tornado's path does.

Each test opens a connection and publishes once (Tornado's path answers and hands the socket
over), then sends what it checks on that same connection. Its answer is compared with the answer
to the same bytes as the first request of a new connection, which Tornado's path serves.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from sentri import group_commit
from sentri.accept import HTTPServer
from sentri.models import RunLog

from .test_publish_fastpath import ORIGIN, PATH, PUBLISH_TOKEN, body_of, normalised, status_of

ACCEPTED = re.compile(rb'HTTP/1\.1 202 Accepted\r\n.*\r\n\r\n\{"id":"[^"]+"\}', re.S)


@pytest.fixture
def settings(settings):
    return settings.replace(publish_token=PUBLISH_TOKEN, publish_max_bytes=1024, retry_ms=0, cors_origin=[ORIGIN])


def publish(body: bytes = b'{"type":"log","message":"hello"}', path: str = PATH, headers: str = "",
            token: str = PUBLISH_TOKEN) -> bytes:
    """A kept-alive publish request (no ``Connection: close``)."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    return (head + f"Content-Length: {len(body)}\r\n" + headers + "\r\n").encode() + body


class Producer:
    """One kept-alive connection; ``answer`` reads one whole response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Producer:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def answer(self) -> bytes:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout=10)
        length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
        body = await self.reader.readexactly(int(length.group(1))) if length else b""
        return head + body

    async def send(self, raw: bytes) -> bytes:
        """Send ``raw`` and read its answer (an interim ``100`` and the final one, if so)."""
        self.writer.write(raw)
        answer = await self.answer()
        if answer.startswith(b"HTTP/1.1 100 "):
            answer += await self.answer()
        return answer

    async def hung_up(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), timeout=10) == b""

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
def producer(port, http_server, world, io_loop) -> Iterator[Producer]:
    """A connection that has published once: the route holds it now."""

    async def first_publish() -> Producer:
        producer = await Producer.connect(port)
        assert ACCEPTED.fullmatch(await producer.send(publish(b'{"type":"log","message":"first"}')))
        await asyncio.sleep(0)
        assert len(http_server.publish_connections) == 1
        return producer

    producer = io_loop.run_sync(first_publish)
    yield producer
    producer.close()


async def first_on_a_new_connection(port: int, raw: bytes) -> bytes:
    """Tornado's answer: ``raw`` as the first request of a connection of its own."""
    fresh = await Producer.connect(port)
    try:
        return await fresh.send(raw)
    finally:
        fresh.close()


def stored_messages(context) -> List[Tuple[int, str]]:  # type: ignore[no-untyped-def]
    with context.store.database.connection_context():
        query = RunLog.select(RunLog.seq, RunLog.message).where(RunLog.runId == "RUN-1").order_by(RunLog.seq)
        return [(seq, message.split("] ", 1)[1]) for seq, message in query.tuples()]


@pytest.mark.gen_test
async def test_a_producers_next_publishes_are_served_by_the_route_with_tornados_bytes_and_access_line(
        port, world, context, http_server, access_lines):
    producer = await Producer.connect(port)
    answers = [await producer.send(publish(f'{{"type":"log","message":"line {n}"}}'.encode(),
                                           headers=f"Origin: {ORIGIN}\r\n")) for n in range(4)]
    assert len(http_server.publish_connections) == 1
    producer.close()
    assert len({normalised(answer) for answer in answers}) == 1  # the first was Tornado's, the rest the route's
    assert answers[0].split(b"\r\n")[1:-2] != []
    assert [line for line, _ in access_lines.lines] == [f"POST {PATH} 202"] * 4
    assert len({tuple(sorted(fields.items())) for _, fields in access_lines.lines}) == 1
    assert access_lines.lines[-1][1]["ip"] == "127.0.0.1"
    ids = [re.search(rb'"id":"([^"]+)"', answer).group(1) for answer in answers]
    assert len(set(ids)) == 4
    assert stored_messages(context) == [(n + 1, f"line {n}") for n in range(4)]


@pytest.mark.gen_test
async def test_requests_sent_together_are_answered_in_the_order_sent(producer, world, context):
    producer.writer.write(b"".join(publish(f'{{"type":"log","message":"together {n}"}}'.encode()) for n in range(3)))
    answers = [await producer.answer() for _ in range(3)]
    assert all(ACCEPTED.fullmatch(answer) for answer in answers)
    assert stored_messages(context)[1:] == [(2, "together 0"), (3, "together 1"), (4, "together 2")]


@pytest.mark.gen_test
async def test_a_request_arriving_in_pieces_is_served_once_whole(producer, world, context):
    raw = publish(b'{"type":"log","message":"in pieces"}')
    for start in range(0, len(raw), 7):
        producer.writer.write(raw[start:start + 7])
        await producer.writer.drain()
        await asyncio.sleep(0.001)
    assert ACCEPTED.fullmatch(await producer.answer())
    assert stored_messages(context)[-1] == (2, "in pieces")


# Requests the route does not serve itself: Tornado's path answers them (refusals, another path,
# what only Tornado's parser handles). The connection goes on unless Tornado ends it: after a
# malformed head, and after a refusal made before the body was read (401, 413). None: it goes on
# when Tornado accepts the request (a folded header: Tornado 6.5 unfolds it, 6.6 answers 400).
NOT_SERVED_HERE: Dict[str, Tuple[bytes, Optional[bool]]] = {
    "bad JSON": (publish(b"{not json"), True),
    "bad event": (publish(b'[{"type":"log","message":"a"},{"type":"log"}]'), True),
    "unknown run": (publish(path="/api/v1/runs/RUN-404/events"), True),
    "wrong token": (publish(token="wrong"), False),
    "no token": (publish(token=""), False),
    "too large": (publish(b'{"type":"log","message":"' + b"x" * 2000 + b'"}'), False),
    "escaped run id": (publish(path="/api/v1/runs/RUN%2D1/events"), True),
    "query string": (publish(path=PATH + "?x=1"), True),
    "a header twice": (publish(headers="Origin: a\r\nOrigin: b\r\n"), True),
    "a token twice": (publish(headers=f"Authorization: Bearer {PUBLISH_TOKEN}\r\n"), False),
    "a folded header": (publish(headers="X-Note: a\r\n b\r\n"), None),
    "chunked body": (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PUBLISH_TOKEN}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n20\r\n{\"type\":\"log\",\"message\":\"chunk\"}\r\n0\r\n\r\n"
                     .encode(), True),
    "expect continue": (publish(headers="Expect: 100-continue\r\n"), True),
    "another path": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", True),
    "HTTP/1.0": (publish().replace(b"HTTP/1.1", b"HTTP/1.0"), False),
    "connection close": (publish(headers="Connection: close\r\n"), False),
}


@pytest.mark.gen_test
@pytest.mark.parametrize("name", list(NOT_SERVED_HERE))
async def test_a_request_the_route_does_not_serve_gets_tornados_own_answer(port, producer, world, context,
                                                                          http_server, name):
    raw, connection_goes_on = NOT_SERVED_HERE[name]
    kept = await producer.send(raw)
    assert normalised(kept) == normalised(await first_on_a_new_connection(port, raw))
    if connection_goes_on is None:
        connection_goes_on = status_of(kept) == 202
    if connection_goes_on:
        assert ACCEPTED.fullmatch(await producer.send(publish(b'{"type":"log","message":"after"}')))
        await asyncio.sleep(0)
        assert len(http_server.publish_connections) == 1  # the route has it again after Tornado's 202
        assert stored_messages(context)[-1][1] == "after"
    else:
        assert await producer.hung_up()


@pytest.mark.gen_test
async def test_a_database_that_fails_is_tornados_503_after_one_more_try(producer, port, world, monkeypatch,
                                                                       expect_log):
    tries: List[int] = []

    def refuse(*args: Any) -> None:
        tries.append(1)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(group_commit, "commit_writes", refuse)
    expect_log("sentri.access", r"POST /api/v1/runs/RUN-1/events 503$", level=logging.ERROR)
    with expect_log("tornado.general", r"503 POST /api/v1/runs/RUN-1/events \(127\.0\.0\.1\): publish failed: "
                    r"RuntimeError$") as warned:
        answer = await producer.send(publish())
    assert warned.matched == 1 and len(tries) == 2  # the route's try, then Tornado's, which answers
    assert (status_of(answer), body_of(answer)) == (503, b'{"error":"database unavailable","retryAfter":1}')
    assert b"disk on fire" not in answer


@pytest.mark.gen_test
async def test_a_producer_that_hangs_up_mid_publish_still_has_its_line_stored(producer, world, context, http_server):
    producer.writer.write(publish(b'{"type":"log","message":"then gone"}'))
    await producer.writer.drain()
    producer.close()
    for _ in range(200):
        if not http_server.publish_connections:
            break
        await asyncio.sleep(0.01)
    assert http_server.publish_connections == set()
    assert stored_messages(context)[-1] == (2, "then gone")


@pytest.mark.gen_test(timeout=60)
async def test_a_producer_reading_its_answers_late_gets_every_one_in_order(port, http_server, world, context,
                                                                          monkeypatch):
    from handlers.publish_connection import PublishConnection

    unsent_handed_back: List[int] = []
    hand_back = PublishConnection._hand_back

    def watched_hand_back(connection: PublishConnection, request: bytes, unsent: bytes = b"") -> None:
        if unsent:
            unsent_handed_back.append(len(unsent))
        hand_back(connection, request, unsent)

    monkeypatch.setattr(PublishConnection, "_hand_back", watched_hand_back)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: no autotuning
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    producer = Producer(*await asyncio.open_connection(sock=sock))
    assert ACCEPTED.fullmatch(await producer.send(publish()))
    await asyncio.sleep(0)
    (connection,) = http_server.publish_connections
    connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    producer.writer.transport.pause_reading()  # the producer stops reading its answers

    count = 600
    producer.writer.write(b"".join(publish(f'{{"type":"log","message":"late {n}"}}'.encode()) for n in range(count)))
    for _ in range(1000):
        if unsent_handed_back:
            break
        await asyncio.sleep(0.01)
    assert unsent_handed_back  # a 202 the socket took only part of went to Tornado to finish
    producer.writer.transport.resume_reading()
    answers = [await producer.answer() for _ in range(count)]
    producer.close()
    assert all(ACCEPTED.fullmatch(answer) for answer in answers)
    seqs = [int(re.search(rb'"id":"\d+-(\d+)"', answer).group(1)) for answer in answers]
    assert seqs == list(range(2, count + 2))
    assert stored_messages(context)[1:] == [(n + 2, f"late {n}") for n in range(count)]


@pytest.mark.gen_test
async def test_closing_the_servers_connections_closes_the_routes_too(producer, http_server):
    await http_server.close_all_connections()
    assert await producer.hung_up()
    assert http_server.publish_connections == set()


@pytest.fixture
def proxied_server(app, io_loop) -> Iterator[Tuple[HTTPServer, int]]:
    """A server as ``sentri serve`` runs it behind nginx (``xheaders``), whose idle connections
    close after 0.3 s."""
    import tornado.testing

    sock, port = tornado.testing.bind_unused_port()
    server = HTTPServer(app, xheaders=True, idle_connection_timeout=0.3)
    server.add_sockets([sock])
    yield server, port
    server.stop()
    io_loop.run_sync(server.close_all_connections)


@pytest.mark.gen_test
async def test_behind_a_proxy_the_access_line_names_the_proxys_client(proxied_server, world, access_lines):
    server, port = proxied_server
    producer = await Producer.connect(port)
    for address in ("10.1.2.3", "10.4.5.6"):
        assert ACCEPTED.fullmatch(await producer.send(publish(headers=f"X-Real-Ip: {address}\r\n")))
    assert ACCEPTED.fullmatch(await producer.send(publish()))
    producer.close()
    assert [fields["ip"] for _, fields in access_lines.lines] == ["10.1.2.3", "10.4.5.6", "127.0.0.1"]


@pytest.mark.gen_test
async def test_a_kept_connection_left_idle_is_closed_after_the_servers_idle_timeout(proxied_server, world):
    server, port = proxied_server
    producer = await Producer.connect(port)
    assert ACCEPTED.fullmatch(await producer.send(publish()))
    await asyncio.sleep(0.2)
    assert ACCEPTED.fullmatch(await producer.send(publish()))  # answering restarts the idle time
    assert len(server.publish_connections) == 1
    started = asyncio.get_running_loop().time()
    assert await producer.hung_up()
    producer.close()
    assert 0.25 < asyncio.get_running_loop().time() - started < 2
    assert server.publish_connections == set()


def test_headers_given_in_any_case_are_found_in_any_case() -> None:
    from handlers.publish_connection import parse_head

    parsed = parse_head(b"POST /api/v1/runs/R-1/events HTTP/1.1\r\nhost: x\r\nCONTENT-LENGTH: 2\r\n"
                        b"authorization:  Bearer t \t")
    assert parsed is not None
    run_id, headers = parsed
    assert run_id == "R-1"
    assert (headers.get("Content-Length"), headers.get("Authorization"), "Host" in headers) == ("2", "Bearer t", True)
    assert headers.get("Origin") is None

