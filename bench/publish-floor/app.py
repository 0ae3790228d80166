"""The least Tornado's HTTP/1 server can do per publish: the floor issue 12's single-line target
is measured against (``bench/peer-publish-floor.json``).

Streams: a fixed token, a fixed snapshot, the socket detached and held per run. Publishes:
``POST /api/v1/runs/<runId>/events`` parsed by Tornado's ``HTTP1Connection`` into a bare
``HTTPMessageDelegate`` (no ``Application``, no routing, no ``RequestHandler``), the bearer
compared as a string, the body sent as one ``data:`` frame to each of the run's sockets with
one ``send()`` each, and a fixed ``202``. Nothing is parsed as JSON, checked, stored or given
an id: everything the real publish API does beyond this is the project's own cost.
"""

import asyncio
import os
import socket
from typing import Dict, List, Optional

from tornado import httputil
from tornado.httpserver import HTTPServer

TOKEN = os.environ["BENCH_TOKEN"]
BEARER = ("Bearer " + TOKEN).encode()
SNAPSHOT = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Connection: keep-alive\r\n\r\n"
            b'data: {"type":"snapshot","run":{"id":"x","status":"running","logs":["a","b","c"]}}\n\n')
ACCEPTED = httputil.ResponseStartLine("HTTP/1.1", 202, "Accepted")
ACCEPTED_BODY = b'{"id":"1"}'
streams: Dict[str, List[socket.socket]] = {}


class Request(httputil.HTTPMessageDelegate):
    def __init__(self, connection: httputil.HTTPConnection) -> None:
        self.connection = connection
        self.start: Optional[httputil.RequestStartLine] = None
        self.headers: Optional[httputil.HTTPHeaders] = None
        self.body: List[bytes] = []

    def headers_received(self, start_line, headers):  # type: ignore[no-untyped-def]
        self.start, self.headers = start_line, headers

    def data_received(self, chunk: bytes) -> None:
        self.body.append(chunk)

    def finish(self) -> None:
        assert self.start is not None and self.headers is not None
        path = self.start.path
        if path.startswith("/api/v1/runs/") and path.split("?", 1)[0].endswith("/events"):
            run_id = path[len("/api/v1/runs/"):].split("/", 1)[0]
            if self.start.method == "POST":
                return self._publish(run_id)
            if path.endswith("token=" + TOKEN):
                return self._stream(run_id)
        self._answer(httputil.ResponseStartLine("HTTP/1.1", 200 if path == "/healthz" else 404, "OK"), b"ok")

    def _publish(self, run_id: str) -> None:
        if self.headers is None or self.headers.get("Authorization", "").encode() != BEARER:
            return self._answer(httputil.ResponseStartLine("HTTP/1.1", 401, "Unauthorized"), b"")
        frame = b"data: " + b"".join(self.body) + b"\n\n"
        for sock in streams.get(run_id, ()):
            try:
                sock.send(frame)
            except OSError:  # a stream that left: dropped at the next heartbeat
                continue
        self._answer(ACCEPTED, ACCEPTED_BODY)

    def _stream(self, run_id: str) -> None:
        stream = self.connection.detach()  # type: ignore[attr-defined]
        sock = stream.socket
        stream.io_loop.remove_handler(sock.fileno())
        stream.socket = None
        sock.send(SNAPSHOT)
        streams.setdefault(run_id, []).append(sock)

    def _answer(self, start: httputil.ResponseStartLine, body: bytes) -> None:
        headers = httputil.HTTPHeaders({"Content-Type": "application/json", "Content-Length": str(len(body))})
        self.connection.write_headers(start, headers, body)
        self.connection.finish()


class Server(httputil.HTTPServerConnectionDelegate):
    def start_request(self, server_conn, request_conn):  # type: ignore[no-untyped-def]
        return Request(request_conn)


async def main() -> None:
    server = HTTPServer(Server())
    server.bind(int(os.environ["PORT"]), "127.0.0.1", backlog=4096)
    server.start()

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(5)
            for held in streams.values():
                for sock in list(held):
                    try:
                        sock.send(b": heartbeat\n\n")
                    except OSError:
                        held.remove(sock)

    asyncio.ensure_future(heartbeat())
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
