"""Accepting connections at the open-files limit: wait, don't spin.

A process holding tens of thousands of streams meets its open-files limit (``ulimit -n``) in
a reconnect storm: ``accept()`` then fails with ``EMFILE`` while the connection stays in the
kernel's listen backlog, so the listening socket stays readable. Tornado's own accept handler
lets that error escape to the loop, which calls it again at once: a busy loop that logged over
a million tracebacks a minute in the storm benchmark, starving the open streams.

Here the same accept loop, on a resource error (``EMFILE``, ``ENFILE``, ``ENOBUFS``,
``ENOMEM``), stops watching the socket for ``PAUSE_S`` and tries again, as nginx does. The
waiting connections stay in the backlog (nothing is refused or reset); each one is accepted as
soon as a stream ends and frees a descriptor. One warning is logged when a pause starts and
one line when accepting works again, with how long it waited: never one per attempt.

The second thing it changes is where a storm waits. A reconnect storm is 19,000 SYNs within a
fraction of a second, and the kernel's accept queue holds ``somaxconn`` (4,096 here): every
SYN past it is dropped, and its client tries again after 1, 3, 7, 15 s. Tornado accepts 128
connections and serves each before it accepts more, so the kernel queue stayed full and a
storm finished in SYN-retry steps (5.3, 7.4 or 11.8 s for the same 19,000 clients). Here a
readiness event only accepts (a system call and a socket object, about 10 us each), up to
``ACCEPTS_PER_EVENT``, into a queue of our own; another callback hands ``HANDOVERS_PER_TURN``
of them to Tornado per loop turn, in order. The kernel's queue is emptied as fast as clients
fill it, so they wait in our queue (connected, their request in the socket buffer) instead of
in SYN retries, and the loop's other work (events for the open streams) still gets a turn
between every batch.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections import deque
from typing import Any, Callable, Deque, Iterable, Optional, Set, Tuple

import tornado.httpserver
import tornado.iostream
from tornado.http1connection import HTTP1ConnectionParameters, HTTP1ServerConnection
from tornado.ioloop import IOLoop

from .proxy_headers import RequestContext

log = logging.getLogger("sentri.accept")

# Errors that say "no resources for one more connection now", not "this connection is bad".
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Long enough that a full backlog costs a few wake-ups a second, short enough that a freed
# descriptor is used before the waiting client's own timeout.
PAUSE_S = 0.25
# Connections accepted per readiness event: about 10 ms of accept() at most, so a full kernel
# queue (4,096) is emptied in four loop turns.
ACCEPTS_PER_EVENT = 1024
# Accepted connections handed to Tornado per loop turn: about 10 ms of serving, then the loop's
# other work gets its turn. 64 rather than Tornado's 128: in the storm-under-load benchmark the
# open streams' p99 went from 92 to 43 ms, and the storm itself ended sooner (5.2 -> 4.5 s).
HANDOVERS_PER_TURN = 64


class _Acceptor:
    """Accepts on one listening socket for as long as it is watched."""

    def __init__(self, sock: socket.socket, callback: Callable[[socket.socket, object], None],
                 on_pause: Optional[Callable[[], None]], pause_s: float) -> None:
        self.sock = sock
        self.callback = callback
        self.on_pause = on_pause
        self.pause_s = pause_s
        self.loop = IOLoop.current()
        self.removed = False
        self.watching = False
        self.paused_at = 0.0  # when the current pause began (monotonic); 0 when accepting
        self.accepted: Deque[Tuple[socket.socket, object]] = deque()  # not yet handed to Tornado
        self.handing_over = False

    def watch(self) -> None:
        if not self.removed:
            self.watching = True
            self.loop.add_handler(self.sock, self.on_readable, IOLoop.READ)

    def remove(self) -> None:
        """Stop accepting; connections already accepted are still handed over (and answered)."""
        if self.watching:
            self.loop.remove_handler(self.sock)
        self.removed = True
        self.watching = False

    def on_readable(self, fd: object, events: int) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            if self.removed:
                break
            try:
                connection, address = self.sock.accept()
            except BlockingIOError:
                break
            except ConnectionAbortedError:
                continue
            except OSError as error:
                if error.errno not in OUT_OF_RESOURCES:
                    raise
                self.pause(error)
                break
            if self.paused_at:
                log.warning("accepting again after %.1f s at the open-files limit", time.monotonic() - self.paused_at)
                self.paused_at = 0.0
            self.accepted.append((connection, address))
        if self.accepted and not self.handing_over:
            self.handing_over = True
            self.loop.add_callback(self.hand_over)

    def hand_over(self) -> None:
        accepted = self.accepted
        try:
            for _ in range(min(HANDOVERS_PER_TURN, len(accepted))):
                connection, address = accepted.popleft()
                self.callback(connection, address)
        finally:  # a callback that raised (the loop logs it) must not strand the rest of the queue
            if accepted:
                self.loop.add_callback(self.hand_over)
            else:
                self.handing_over = False

    def pause(self, error: OSError) -> None:
        self.loop.remove_handler(self.sock)
        self.watching = False
        if not self.paused_at:
            self.paused_at = time.monotonic()
            log.warning("accepting paused: %s; new connections wait in the listen backlog", error.strerror)
        if self.on_pause is not None:
            self.on_pause()
        self.loop.call_later(self.pause_s, self.watch)


def accept_connections(sock: socket.socket, callback: Callable[[socket.socket, object], None],
                       on_pause: Optional[Callable[[], None]] = None,
                       pause_s: float = PAUSE_S) -> Callable[[], None]:
    """``tornado.netutil.add_accept_handler`` with our own queue, pausing instead of spinning at the limit.

    Returns the function that stops accepting (also during a pause), as Tornado's does;
    connections already accepted are still handed to ``callback``.
    """
    acceptor = _Acceptor(sock, callback, on_pause, pause_s)
    acceptor.watch()
    return acceptor.remove


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server with the accept loop above; ``on_accept_pause`` counts pauses.

    Its connections also skip ``xheaders`` for requests that carry no proxy header
    (``sentri.proxy_headers``), and a producer's kept-alive connection may be served by the
    publish route itself (``handlers/publish_connection.py``): the server keeps those in
    ``publish_connections``, closes them with its own, and takes their sockets back
    (``serve_stream``).
    """

    on_accept_pause: Optional[Callable[[], None]] = None

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.publish_connections: Set[Any] = set()

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = accept_connections(sock, self._handle_connection, self.on_accept_pause)

    def handle_stream(self, stream: tornado.iostream.IOStream, address: Tuple[Any, ...]) -> None:
        # Tornado's own, with the request context of sentri.proxy_headers.
        context = RequestContext(stream, address, self.protocol, self.trusted_downstream, server=self)
        self.serve_stream(stream, self.conn_params, context)

    def serve_stream(self, stream: tornado.iostream.IOStream, params: HTTP1ConnectionParameters,
                     context: RequestContext) -> None:
        """Serve ``stream`` with Tornado's HTTP/1 connection (a new one, or one handed back)."""
        connection = HTTP1ServerConnection(stream, params, context)
        self._connections.add(connection)
        connection.start_serving(self)

    async def close_all_connections(self) -> None:
        for connection in list(self.publish_connections):
            connection.close()
        await super().close_all_connections()
