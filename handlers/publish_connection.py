"""A producer's kept-alive connection, served without Tornado's HTTP/1 layer once it has published.

A producer sends one ``POST /api/v1/runs/{runId}/events`` after another on one connection.
Tornado reads each through its HTTP/1 layer: a connection object, a header parser, a timeout
and a routing delegate per request, then the response formatted and the socket's Nagle
switched on and off. That was most of the IOLoop's time per publish (py-spy over the harness's
throughput scenario), and a route of our own (``handlers/publish_fast.py``) could not reach it.

So once a connection has been answered a ``202`` there and Tornado holds nothing of it (no
unsent bytes, no bytes read ahead), the route takes the socket (``take_over``) and serves the
connection's next requests here: the head split into lines, the same checks in the same order
(``head_refusal``, ``read_events``, ``publish_events``), the same ``202`` bytes, the same
access line. A ``202`` still means committed.

Only the plain case is served here. A request that is anything else, and every refusal, goes
back to Tornado, its bytes and the socket with it (``_hand_back``): a new Tornado connection
reads the request from the start, so its answer (a 400, 401, 404, 413, 503, a request for
another path) is Tornado's and the handlers' own, byte for byte. A refusal decided here has
stored nothing; a publish the database refused (503) or whose run is unknown (404) is simply
tried once more there. "Anything else" is: not ``POST`` to the events path, not HTTP/1.1, a
query string, an escaped run id, a header line that is not plain ``Name: value`` or a header
given twice, a chunked body, ``Expect``, a ``Connection`` other than ``keep-alive``, no
``Host`` or ``Content-Length``.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import tornado.iostream
from tornado import httputil
from tornado.http1connection import HTTP1ConnectionParameters, HTTP1ServerConnection

from sentri.cors import cors_headers
from sentri.http import http_date
from sentri.logs import log_access
from sentri.sse import dumps_js

from .base import JSON_CONTENT_TYPE, DelegateRoute
from .publish_api import accepted, head_refusal, publish_events, read_events

if TYPE_CHECKING:
    from sentri.accept import HTTPServer


ACCEPTED_LINE = b"HTTP/1.1 202 Accepted\r\n"
_EVENTS_PATH = re.compile(r"/api/v1/runs/([^/?%]+)/events")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Reads per readiness event; a request bigger than this waits for the next event.
RECV_BYTES = 65536


class RequestHead(Dict[str, str]):
    """A request's headers by lower-case name; ``get`` takes any case, as ``HTTPHeaders.get`` does."""

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


def parse_head(head: bytes) -> Optional[Tuple[str, RequestHead]]:
    """The run id and headers of a publish head served here, or None: Tornado serves the request.

    ``head``: the bytes before the blank line. Header bytes are Latin-1, as Tornado reads them.
    """
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "POST" or parts[2] != "HTTP/1.1":
        return None
    path = _EVENTS_PATH.fullmatch(parts[1])
    if path is None:
        return None
    try:
        run_id = path.group(1).encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return None
    headers = RequestHead()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name) or _CONTROL.search(value):
            return None
        key = name.lower()
        if key in headers:
            return None
        headers[key] = value.strip(" \t")
    if ("transfer-encoding" in headers or "expect" in headers or "host" not in headers
            or not headers.get("content-length", "").isdigit()
            or headers.get("connection", "keep-alive").lower() != "keep-alive"):
        return None
    return run_id, headers


class AccessRecord:
    """What ``log_access`` reads of a request served here."""

    __slots__ = ("method", "path", "headers", "context", "xheaders", "started")

    def __init__(self, path: str, headers: RequestHead, context: Any, xheaders: bool, started: float) -> None:
        self.method = "POST"
        self.path = path
        self.headers = headers
        self.context = context
        self.xheaders = xheaders
        self.started = started

    def request_time(self) -> float:
        return time.time() - self.started

    @property
    def remote_ip(self) -> str:
        """The client's address as Tornado's ``xheaders`` give it (``sentri.proxy_headers``);
        read only when an access line is written."""
        if not self.xheaders:
            return self.context.remote_ip  # type: ignore[no-any-return]
        self.context._apply_xheaders(self.headers)
        remote_ip: str = self.context.remote_ip
        self.context._unapply_xheaders()
        return remote_ip


def accepted_headers(data: bytes, origin: Optional[str], cors_origin: str) -> List[Tuple[str, str]]:
    """The ``202``'s headers, in ``RequestHandler``'s order: Content-Type and Date (``clear()``),
    CORS (``initialize()``), Content-Length (``finish()``). Both publish paths write these."""
    headers = [("Content-Type", JSON_CONTENT_TYPE), ("Date", http_date(time.time()))]
    headers.extend(cors_headers(origin, cors_origin))
    headers.append(("Content-Length", str(len(data))))
    return headers


class PublishConnection:
    """One producer's connection after ``take_over``: its requests, one at a time, in order."""

    def __init__(self, route: DelegateRoute, server: HTTPServer, sock: socket.socket,
                 params: HTTP1ConnectionParameters, context: Any) -> None:
        self.route = route
        self.server = server
        self.sock = sock
        self.params = params
        # Tornado's request context of the connection (its address and proxy-header rewriting),
        # which goes back with the socket.
        self.context = context
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray()
        self.serving = False  # a request is being published; the next waits in ``buffer``
        self.reading = False
        self.closed = False
        self.peer_gone = False
        # Requests and the bytes they may hold: a producer sending more than one whole request
        # ahead is not read further until it is answered.
        self.max_buffer = params.max_header_size + route.context.settings.publish_max_bytes + 4
        self.idle_s: float = params.header_timeout or 0.0
        self.idle_timer: Optional[asyncio.TimerHandle] = None
        self.answered_at = self.loop.time()
        # Answers are small and complete: each goes out at once (Tornado switches Nagle off per
        # response; here once).
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server.publish_connections.add(self)
        self._read_more()
        self._arm_idle_timer()

    # -- reading --------------------------------------------------------------------------

    def _read_more(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self.loop.add_reader(self.sock.fileno(), self._on_readable)

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.sock.fileno())

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.peer_gone = True
            self._stop_reading()
            if not self.serving:  # a publish being served finishes first, as it would in Tornado
                self.close()
            return
        self.buffer += data
        if len(self.buffer) > self.max_buffer:
            self._stop_reading()
        if not self.serving:
            self._next_request()

    def _next_request(self) -> None:
        buffer = self.buffer
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0 or head_end > self.params.max_header_size:
            if len(buffer) > self.params.max_header_size:
                self._hand_back(b"")  # Tornado refuses the oversized head
            return
        try:
            parsed = parse_head(bytes(buffer[:head_end]))
        except ValueError:
            parsed = None
        if parsed is None or head_refusal(self.route.context.settings, parsed[1]) is not None:
            self._hand_back(b"")
            return
        run_id, headers = parsed
        end = head_end + 4 + int(headers["content-length"])
        if len(buffer) < end:
            return  # the body is still coming (its size is within the bound: head_refusal)
        request = bytes(buffer[:end])
        del buffer[:end]
        self.serving = True
        path = request[5:request.index(b" ", 5)].decode("latin-1")  # after "POST "
        self.route.serve(self._publish(request, request[head_end + 4:], run_id, headers, path, time.time()))

    # -- the publish ------------------------------------------------------------------------

    async def _publish(self, request: bytes, body: bytes, run_id: str, headers: RequestHead, path: str,
                       started: float) -> None:
        context = self.route.context
        try:
            events, batch = read_events(body, headers.get("Content-Type", ""), context.settings)
            ids = await publish_events(context.publisher, run_id, events)
        except asyncio.CancelledError:
            # The process exits with this publish unfinished: Tornado's path answers it 504; with
            # the loop stopping it can't be handed back, and a closed connection says as much.
            self.close()
            raise
        except Exception:
            # Nothing of it was stored: Tornado's path reads it again and answers (or publishes).
            self._hand_back(request)
            return
        self._answer(ids, batch, headers, path, started)

    def _answer(self, ids: List[Optional[str]], batch: bool, headers: RequestHead, path: str, started: float) -> None:
        self.serving = False
        if self.closed:
            return
        data = dumps_js(accepted(ids, batch)).encode("utf-8")
        lines = [f"{name}: {value}\r\n" for name, value in
                 accepted_headers(data, headers.get("Origin"), self.route.context.settings.cors_origin)]
        response = ACCEPTED_LINE + "".join(lines).encode("latin-1") + b"\r\n" + data
        try:
            sent = self.sock.send(response)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = -1
        log_access(AccessRecord(path, headers, self.context, self.server.xheaders, started), 202)  # type: ignore[arg-type]
        if sent < 0 or self.peer_gone:
            self.close()
            return
        self.answered_at = self.loop.time()
        if sent < len(response):
            # The producer is not reading its answers: Tornado buffers the rest and reads on.
            self._hand_back(b"", unsent=response[sent:])
            return
        self._read_more()
        if self.buffer:
            self._next_request()

    # -- leaving ----------------------------------------------------------------------------

    def _hand_back(self, request: bytes, unsent: bytes = b"") -> None:
        """Give the socket back to Tornado with ``request`` and everything read after it unread."""
        if self.closed:
            return
        pending = request + bytes(self.buffer)
        sock = self._release()
        stream = tornado.iostream.IOStream(sock)
        if pending:
            # The bytes this connection read, as if Tornado had read them itself.
            stream._read_buffer += pending
            stream._read_buffer_size += len(pending)
        if unsent:
            stream.write(unsent)
        self.server.serve_stream(stream, self.params, self.context)

    def close(self) -> None:
        if not self.closed:
            self._release().close()

    def _release(self) -> socket.socket:
        self._stop_reading()
        self.closed = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self.server.publish_connections.discard(self)
        return self.sock

    def _arm_idle_timer(self) -> None:
        if self.idle_s:
            self.idle_timer = self.loop.call_at(self.answered_at + self.idle_s, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        # One timer a connection, checked when due, instead of one set and cancelled per request:
        # a connection that answered nothing for ``header_timeout`` is closed, as Tornado's is.
        self.idle_timer = None
        if self.serving or self.loop.time() < self.answered_at + self.idle_s:
            self._arm_idle_timer()
        else:
            self.close()


def take_over(route: DelegateRoute, request: httputil.HTTPServerRequest) -> bool:
    """After a ``202`` on Tornado's path: serve the connection's next requests here, if Tornado
    holds nothing of it; returns whether it did."""
    connection = request.connection
    server_connection = request.server_connection
    if not isinstance(server_connection, HTTP1ServerConnection) or connection is None:
        return False
    context = getattr(connection, "context", None)
    server = getattr(context, "server", None)  # set by sentri.accept.HTTPServer only
    stream = getattr(connection, "stream", None)
    if (server is None or stream is None or stream.closed() or stream.writing() or stream._read_buffer_size
            or request.version != "HTTP/1.1"):
        return False
    stream = connection.detach()  # type: ignore[attr-defined]
    sock = stream.socket
    stream.io_loop.remove_handler(sock.fileno())
    stream.socket = None  # the socket is ours now: the IOStream must not close it
    PublishConnection(route, server, sock, server_connection.params, context)
    return True


__all__ = ["PublishConnection", "accepted_headers", "parse_head", "take_over"]

