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
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from typing import Callable, Iterable, Optional

import tornado.httpserver
from tornado.ioloop import IOLoop

log = logging.getLogger("sentri.accept")

# Errors that say "no resources for one more connection now", not "this connection is bad".
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Long enough that a full backlog costs a few wake-ups a second, short enough that a freed
# descriptor is used before the waiting client's own timeout.
PAUSE_S = 0.25
# Connections taken per readiness event, as Tornado does: the loop's other work (events for
# the open streams) gets its turn between batches during a storm.
ACCEPTS_PER_EVENT = 128


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

    def watch(self) -> None:
        if not self.removed:
            self.watching = True
            self.loop.add_handler(self.sock, self.on_readable, IOLoop.READ)

    def remove(self) -> None:
        if self.watching:
            self.loop.remove_handler(self.sock)
        self.removed = True
        self.watching = False

    def on_readable(self, fd: object, events: int) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            if self.removed:
                return
            try:
                connection, address = self.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:
                if error.errno not in OUT_OF_RESOURCES:
                    raise
                self.pause(error)
                return
            if self.paused_at:
                log.warning("accepting again after %.1f s at the open-files limit", time.monotonic() - self.paused_at)
                self.paused_at = 0.0
            self.callback(connection, address)

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
    """``tornado.netutil.add_accept_handler`` that pauses instead of spinning at the limit.

    Returns the function that stops accepting (also during a pause), as Tornado's does.
    """
    acceptor = _Acceptor(sock, callback, on_pause, pause_s)
    acceptor.watch()
    return acceptor.remove


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server with the accept loop above; ``on_accept_pause`` counts pauses."""

    on_accept_pause: Optional[Callable[[], None]] = None

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = accept_connections(sock, self._handle_connection, self.on_accept_pause)
