"""``GET /api/v1/runs/{runId}/events`` without a ``RequestHandler``: check the request, hand the socket to the hub.

A reconnect storm is thousands of these at once, and almost all of them end with a stream.
A ``RequestHandler`` cost such a connect about as much Python as our own checks, and one
that detaches is never finished, so its reference cycle (the handler and its ``ui``
namespace point at each other; Tornado breaks it only in ``finish()``) kept the request,
both connection objects, the IOStream and the serving task alive until the cyclic garbage
collector found them: ~30 objects a connect, and full collections walking every open stream
during a storm (bench/results/connect-fastpath.md). Here Tornado's HTTP/1 layer hands the
parsed request to a small ``HTTPMessageDelegate``; a connect that ends with a stream leaves
no cycle, so what it allocated is freed by reference counting as soon as it is done.

Every other answer (a JSON error, the 204 for a client that has the ``done``) is rare, and
``RunEventsAnswer``, a ``JsonHandler`` run through Tornado's own handler pipeline, writes it:
status, headers, body, the warning for a logged error and the access line stay those of
every other route. Other methods of the path (the CORS preflight, 405s) stay with
``RunEventsHandler`` (handlers/events.py).
"""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any, List, Optional, Tuple, Union

import tornado.ioloop
import tornado.routing
import tornado.web
from tornado import httputil

from sentri import sse
from sentri.context import Context
from sentri.cors import cors_headers
from sentri.http import stream_head
from sentri.resume import StartPlan, plan_start, requested_id, retry_ms
from sentri.store import StreamLookup, StreamOutcome
from sentri.stream import CloseReason, EventStream
from sentri.tokens import Identity, token_candidates

from .base import SHUTTING_DOWN, ApiError, DelegateRoute, JsonHandler

EVENTS_PATH = r"/api/v1/runs/([^/]+)/events"

AUTH_REQUIRED = {"error": "Authentication required."}
NO_WORKSPACE = {"error": "You are not a member of any workspace. Please contact your administrator."}
RUN_NOT_FOUND = {"error": "not found"}
PROJECT_NOT_FOUND = {"error": "project not found"}
TOO_MANY_LISTENERS = {"error": "too many SSE listeners on this run", "retryAfter": 5}
DATABASE_UNAVAILABLE = {"error": "database unavailable"}
# The pending stream was closed while the run was read (too many events held meanwhile): its
# socket is never attached; the client reconnects (and resumes) after the hint.
STREAM_CLOSED = {"error": "stream closed before it opened", "retryAfter": 1}

# Run ids are short printable words (RUN-12). Anything else (control characters, NUL,
# kilobytes of text) cannot name a run, so it is "not found" without touching the database.
RUN_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")


class RunEventsConnects(DelegateRoute):
    """The GET route's target: a ``RunEventsConnect`` per request; the rare answers that are not
    a stream are written by a ``RunEventsAnswer`` handler of the application."""

    def find_handler(self, request: httputil.HTTPServerRequest, **kwargs: Any) -> httputil.HTTPMessageDelegate:
        # Tornado unquotes the path argument to bytes; bytes that are not UTF-8 name no run, so
        # they decode with U+FFFD and fail RUN_ID_PATTERN (404 after authentication), never a 400.
        raw = kwargs["path_args"][0] or b""
        return RunEventsConnect(self, request, raw.decode("utf-8", "replace"))


class RunEventsConnect(httputil.HTTPMessageDelegate):
    """One GET of the events route, from its parsed request to a stream the hub owns (or a refusal)."""

    client_gone = False
    detached = False
    reserved: Optional[EventStream] = None  # the run's slot this connect holds, until the socket is the stream's

    def __init__(self, route: RunEventsConnects, request: httputil.HTTPServerRequest, run_id: str) -> None:
        self.route = route
        self.context = route.context
        self.request = request
        self.run_id = run_id

    # -- HTTPMessageDelegate ------------------------------------------------------------------

    def finish(self) -> None:
        """The request is read (a GET's body, if any, is ignored, as a handler's was): serve it."""
        # As a RequestHandler does: a client that leaves while its run is read gets no stream. The
        # connection drops this callback when it is detached, finished or closed.
        self.request.connection.set_close_callback(self.on_connection_close)  # type: ignore[union-attr]
        self.route.serve(self._serve())

    def on_connection_close(self) -> None:
        self.client_gone = True

    # -- the connect ------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            await self._connect()
        except asyncio.CancelledError:
            # The process exits with this connect unfinished (asyncio cancels what is left): a
            # connect changes nothing, so the client is told to come back, as during the drain.
            if not self.detached:
                if self.reserved is not None:
                    self.reserved.close(CloseReason.REFUSED)
                self._answer(ApiError(503, SHUTTING_DOWN))
            raise
        except Exception as error:  # ApiError, and anything unexpected: a 500 as Tornado gives it
            if self.detached:  # the socket is the stream's now: logged only, as a detached handler's error was
                logger = RunEventsAnswer(self.route.the_application(), self.request, context=self.context, answer=error)
                logger.log_exception(type(error), error, error.__traceback__)
            else:
                self._answer(error)

    async def _connect(self) -> None:
        context = self.context
        if context.draining:  # a kept-alive connection asking after the listener closed
            raise ApiError(503, SHUTTING_DOWN)
        identity = await self._authenticate()
        run_id = self.run_id
        if not RUN_ID_PATTERN.fullmatch(run_id):
            # Still resolve the workspace: an invalid id must cost what a missing one costs, and
            # a user in no workspace gets its 403 first, as for any other id.
            self._check(await self._look_up(identity, "", None), None)
            raise ApiError(404, RUN_NOT_FOUND)
        hub = context.hub
        remote_ip = self.request.remote_ip or ""
        stream = self.reserved = hub.reserve(run_id, identity.jti, remote_ip)
        if stream is not None:
            # docs/stream.md §3: subscribing is asynchronous; a done published before Redis confirms it
            # would be lost. Bounded: with Redis down or slow the stream proceeds unconfirmed.
            await context.bus.wait_subscribed(run_id, context.settings.relay_subscribe_timeout_s)
        # Reserved (live events held) before history is read, history before the database.
        plan = await plan_start(hub.history, run_id, self._last_event_id())
        if stream is not None and not plan.history_answered:
            context.bus.repair_unread_history(run_id, stream.opened_at, plan.client_through)
        lookup = await self._look_up(identity, run_id, stream, include_snapshot=not plan.replays,
                                     reserved=stream is not None, history_id=plan.snapshot_id)
        try:
            self._check(lookup, stream)
        except ApiError:
            if stream is not None:
                stream.close(CloseReason.REFUSED)
            raise
        if context.draining:  # the drain began while the run was being read
            if stream is not None:
                stream.close(CloseReason.REFUSED)
            raise ApiError(503, SHUTTING_DOWN)
        if stream is not None and stream.close_reason == CloseReason.REVOKED:  # revoked while it was read
            raise ApiError(401, AUTH_REQUIRED)
        if stream is not None and stream.closed:  # closed while pending for another reason
            raise ApiError(503, STREAM_CLOSED)
        if plan.outcome is not None:
            hub.observer.resume_outcome(plan.outcome)
        if plan.client_has_done:  # it has the run's done: 204 ends the browser's reconnect loop
            if stream is not None:
                stream.close(CloseReason.DONE)
            self._answer(204)
            return
        if stream is None:  # over the cap, but the run is finished: it needs no slot
            stream = EventStream(hub, run_id, identity.jti, remote_ip)
        stream.workspace_id = lookup.workspace_id
        taken = self._take_socket()
        if taken is None:
            stream.close(CloseReason.CLIENT_GONE)
            # What the handler's automatic finish did: an empty 200 to the gone client, and its access line.
            self._answer(200)
            return
        sock, chunked = taken
        stream.attach_socket(sock, chunked, context.settings.stream_kernel_unsent_bytes)
        head = self._head(lookup, chunked, plan)
        if lookup.is_running and not plan.replay_ends_run:
            hub.open(stream, head, plan.replayed_through, plan.known_through, lookup.snapshot_logs)
        else:
            hub.finish(stream, head)

    async def _authenticate(self) -> Identity:
        """The first source whose token is valid; a missing or invalid one falls through (docs/auth.md §3).

        As the Node middleware's strategies: cookie, then Bearer, then ``?token=``, each checked
        in full (signature, expiry, revocation) before the next is tried; 401 when none is valid.
        """
        candidates = token_candidates(self._cookie, self.request.headers.get("Authorization"), self._query_token())
        context = self.context
        for token in candidates:
            identity = context.tokens.verify(token)
            if identity is None:
                continue
            if identity.jti and await context.revocations.is_revoked(identity.jti):
                continue
            return identity
        raise ApiError(401, AUTH_REQUIRED)

    def _cookie(self, name: str) -> Optional[str]:
        cookies = self.request.cookies
        return cookies[name].value if name in cookies else None

    def _query_token(self) -> Optional[str]:
        # Tornado answers 400 for a query value that is not UTF-8; here it is a bad token: 401.
        values = self.request.query_arguments.get("token")
        if not values:
            return None
        try:
            return values[-1].decode("utf-8").strip()
        except UnicodeDecodeError:
            return "invalid"

    def _last_event_id(self) -> Optional[str]:
        values = self.request.query_arguments.get("last_event_id")
        query = values[-1].decode("utf-8", "replace") if values else None
        return requested_id(self.request.headers.get("Last-Event-ID"), query)

    async def _look_up(self, identity: Identity, run_id: str, stream: Optional[EventStream],
                       include_snapshot: bool = True, reserved: bool = False,
                       history_id: Optional[str] = None) -> StreamLookup:
        """The run and its project, off the IOLoop; a database that fails is 503, not 500."""
        try:
            return await self.context.store.open_stream(identity.user_id, identity.workspace_id, run_id,
                                                        include_snapshot=include_snapshot, reserved=reserved,
                                                        history_id=history_id)
        except Exception as error:
            if stream is not None:
                stream.close(CloseReason.REFUSED)
            raise ApiError(503, DATABASE_UNAVAILABLE, f"stream lookup failed: {type(error).__name__}") from None

    @staticmethod
    def _check(lookup: StreamLookup, stream: Optional[EventStream]) -> None:
        if lookup.outcome is StreamOutcome.NO_WORKSPACE:
            raise ApiError(403, NO_WORKSPACE)
        if lookup.outcome is StreamOutcome.RUN_NOT_FOUND:
            raise ApiError(404, RUN_NOT_FOUND)
        if lookup.outcome is StreamOutcome.PROJECT_NOT_FOUND:
            raise ApiError(404, PROJECT_NOT_FOUND)
        if stream is None and lookup.is_running:
            raise ApiError(503, TOO_MANY_LISTENERS)

    def _head(self, lookup: StreamLookup, chunked: bool, plan: StartPlan) -> bytes:
        settings = self.context.settings
        frames: List[bytes] = []
        if settings.retry_ms > 0:  # first, so browsers spread their reconnects from the start
            frames.append(sse.retry_frame(retry_ms(settings.retry_ms, settings.retry_jitter_ms)))
        frames.extend(plan.frames(lookup.snapshot_json))
        if not lookup.is_running and not plan.replay_ends_run:
            frames.append(sse.data_frame(lookup.done_json, plan.done_id))
        body = b"".join(sse.chunk(frame) for frame in frames) if chunked else b"".join(frames)
        origin_headers = cors_headers(self.request.headers.get("Origin"), settings.cors_origin)
        return stream_head(chunked, [*origin_headers, *plan.headers()]) + body

    def _take_socket(self) -> Optional[Tuple[socket.socket, bool]]:
        """Detach the connection from Tornado and return its socket, or None if the client left."""
        connection = self.request.connection
        connection_stream = getattr(connection, "stream", None)
        if self.client_gone or connection_stream is None or connection_stream.closed():
            return None
        chunked = self.request.version == "HTTP/1.1"
        # HTTP1Connection's detach, as RequestHandler.detach calls it (HTTPConnection does not declare it).
        iostream = connection.detach()  # type: ignore[union-attr]
        self.detached = True
        sock = iostream.socket
        # Tornado may still watch the descriptor for errors; the stream registers its own reader.
        tornado.ioloop.IOLoop.current().remove_handler(sock.fileno())
        iostream.socket = None
        return sock, chunked

    # -- answers that are not a stream --------------------------------------------------------

    def _answer(self, answer: Answer) -> None:
        """Write ``answer`` through Tornado's own handler pipeline, as ``RunEventsAnswer``."""
        request = self.request
        delegate = self.route.the_application().get_handler_delegate(request, RunEventsAnswer,
                                                             {"context": self.context, "answer": answer})
        delegate.headers_received(httputil.RequestStartLine(request.method or "GET", request.uri or "",
                                                            request.version), request.headers)
        delegate.finish()


# What a connect answers when it is not a stream: an error to raise, or a status with no body.
Answer = Union[Exception, int]


class RunEventsAnswer(JsonHandler):
    """Writes a connect's answer that is not a stream, exactly as a handler of the route did.

    Raising the connect's error here lets ``RequestHandler`` log it (a warning for a logged
    ``ApiError``, the 500's traceback type) and write the JSON error; a status (204, or 200 for
    a client that left meanwhile) is finished empty. Either way the access line is the usual one.
    """

    def initialize(self, context: Context, answer: Answer) -> None:  # type: ignore[override]
        super().initialize(context)
        self.answer = answer

    def get(self) -> None:
        if isinstance(self.answer, Exception):
            raise self.answer
        self.set_status(self.answer)
