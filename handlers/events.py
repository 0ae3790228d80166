"""``GET /api/v1/runs/{runId}/events``: check the request, then hand the socket to the hub.

The handler is only an adapter: it authenticates, looks the run up (off the IOLoop), and
either answers with a JSON error through Tornado or detaches the connection and gives its
socket to an ``EventStream`` the hub owns from then on (docs/stream.md §2).
"""

from __future__ import annotations

import re
import socket
from typing import List, Optional, Tuple

import tornado.ioloop

from sentri import sse
from sentri.cors import is_allowed, preflight_headers
from sentri.http import stream_head
from sentri.resume import StartPlan, plan_start, requested_id, retry_ms
from sentri.store import StreamLookup, StreamOutcome
from sentri.stream import CloseReason, EventStream
from sentri.tokens import Identity, token_candidates

from .base import ApiError, JsonHandler

AUTH_REQUIRED = {"error": "Authentication required."}
NO_WORKSPACE = {"error": "You are not a member of any workspace. Please contact your administrator."}
RUN_NOT_FOUND = {"error": "not found"}
PROJECT_NOT_FOUND = {"error": "project not found"}
TOO_MANY_LISTENERS = {"error": "too many SSE listeners on this run", "retryAfter": 5}
DATABASE_UNAVAILABLE = {"error": "database unavailable"}
ORIGIN_NOT_ALLOWED = {"error": "origin not allowed"}
SHUTTING_DOWN = {"error": "server is shutting down", "retryAfter": 1}
# The pending stream was closed while the run was read (too many events held meanwhile): its
# socket is never attached; the client reconnects (and resumes) after the hint.
STREAM_CLOSED = {"error": "stream closed before it opened", "retryAfter": 1}

# Run ids are short printable words (RUN-12). Anything else (control characters, NUL,
# kilobytes of text) cannot name a run, so it is "not found" without touching the database.
RUN_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")


class LenientDecoding(JsonHandler):
    """Path and query values that are not UTF-8 name nothing; they are refused later, never a 400.

    Tornado answers such bytes with a 400 and a warning holding the whole URL, ``?token=``
    included (docs/settings.md §4). Decoded with U+FFFD instead, a run id fails RUN_ID_PATTERN (404, after
    authentication, as any unknown run) and a token fails verification (401).
    """

    def decode_argument(self, value: bytes, name: Optional[str] = None) -> str:
        return value.decode("utf-8", "replace")


class RunEventsHandler(LenientDecoding):
    _client_gone = False

    def on_connection_close(self) -> None:
        self._client_gone = True

    async def authenticate(self) -> Identity:
        """The first source whose token is valid; a missing or invalid one falls through (docs/auth.md §3).

        As the Node middleware's strategies: cookie, then Bearer, then ``?token=``, each checked
        in full (signature, expiry, revocation) before the next is tried; 401 when none is valid.
        """
        candidates = token_candidates(
            self.get_cookie,
            self.request.headers.get("Authorization"),
            self._query_token(),
        )
        for token in candidates:
            identity = self.context.tokens.verify(token)
            if identity is None:
                continue
            if identity.jti and await self.context.revocations.is_revoked(identity.jti):
                continue
            return identity
        raise ApiError(401, AUTH_REQUIRED)

    def _query_token(self) -> Optional[str]:
        # Tornado answers 400 for a query value that is not UTF-8; here it is a bad token: 401.
        values = self.request.query_arguments.get("token")
        if not values:
            return None
        try:
            return values[-1].decode("utf-8").strip()
        except UnicodeDecodeError:
            return "invalid"

    async def get(self, run_id: str) -> None:
        if self.context.draining:  # a kept-alive connection asking after the listener closed
            self.set_header("Retry-After", "1")
            raise ApiError(503, SHUTTING_DOWN)
        identity = await self.authenticate()
        if not RUN_ID_PATTERN.fullmatch(run_id):
            # Still resolve the workspace: an invalid id must cost what a missing one costs, and
            # a user in no workspace gets its 403 first, as for any other id.
            self._check(await self._look_up(identity, "", None), None)
            raise ApiError(404, RUN_NOT_FOUND)
        hub = self.context.hub
        stream = hub.reserve(run_id, identity.jti, self.request.remote_ip or "")
        if stream is not None:
            # docs/stream.md §3: subscribing is asynchronous; a done published before Redis confirms it
            # would be lost. Bounded: with Redis down or slow the stream proceeds unconfirmed.
            await self.context.bus.wait_subscribed(run_id, self.context.settings.relay_subscribe_timeout_s)
        # Reserved (live events held) before history is read, history before the database.
        plan = await plan_start(hub.history, run_id, self._last_event_id())
        lookup = await self._look_up(identity, run_id, stream, include_snapshot=not plan.replays,
                                     reserved=stream is not None, history_id=plan.snapshot_id)
        try:
            self._check(lookup, stream)
        except ApiError:
            if stream is not None:
                stream.close(CloseReason.REFUSED)
            raise
        if self.context.draining:  # the drain began while the run was being read
            if stream is not None:
                stream.close(CloseReason.REFUSED)
            self.set_header("Retry-After", "1")
            raise ApiError(503, SHUTTING_DOWN)
        if stream is not None and stream.close_reason == CloseReason.REVOKED:  # revoked while it was read
            raise ApiError(401, AUTH_REQUIRED)
        if stream is not None and stream.closed:  # closed while pending for another reason
            self.set_header("Retry-After", "1")
            raise ApiError(503, STREAM_CLOSED)
        if plan.outcome is not None:
            hub.observer.resume_outcome(plan.outcome)
        if plan.client_has_done:  # it has the run's done: 204 ends the browser's reconnect loop
            if stream is not None:
                stream.close(CloseReason.DONE)
            self.set_status(204)
            self.finish()
            return
        if stream is None:  # over the cap, but the run is finished: it needs no slot
            stream = EventStream(hub, run_id, identity.jti, self.request.remote_ip or "")
        stream.workspace_id = lookup.workspace_id
        taken = self._take_socket()
        if taken is None:
            stream.close(CloseReason.CLIENT_GONE)
            return
        sock, chunked = taken
        stream.attach_socket(sock, chunked)
        head = self._head(lookup, chunked, plan)
        if lookup.is_running and not plan.replay_ends_run:
            hub.open(stream, head, plan.replayed_through, plan.known_through, lookup.snapshot_logs)
        else:
            hub.finish(stream, head)

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

    def _check(self, lookup: StreamLookup, stream: Optional[EventStream]) -> None:
        if lookup.outcome is StreamOutcome.NO_WORKSPACE:
            raise ApiError(403, NO_WORKSPACE)
        if lookup.outcome is StreamOutcome.RUN_NOT_FOUND:
            raise ApiError(404, RUN_NOT_FOUND)
        if lookup.outcome is StreamOutcome.PROJECT_NOT_FOUND:
            raise ApiError(404, PROJECT_NOT_FOUND)
        if stream is None and lookup.is_running:
            self.set_header("Retry-After", "5")
            raise ApiError(503, TOO_MANY_LISTENERS)

    def extra_headers(self) -> List[Tuple[str, str]]:
        return self.cors_headers()

    def options(self, run_id: str) -> None:
        """The CORS preflight of a fetch-based SSE client (headers beyond EventSource's)."""
        origin = self.request.headers.get("Origin")
        if not is_allowed(origin, self.context.settings.cors_origin):
            raise ApiError(403, ORIGIN_NOT_ALLOWED)
        for name, value in preflight_headers():
            self.set_header(name, value)
        self.set_status(204)
        self.finish()

    def _last_event_id(self) -> Optional[str]:
        values = self.request.query_arguments.get("last_event_id")
        query = values[-1].decode("utf-8", "replace") if values else None
        return requested_id(self.request.headers.get("Last-Event-ID"), query)

    def _head(self, lookup: StreamLookup, chunked: bool, plan: StartPlan) -> bytes:
        settings = self.context.settings
        frames: List[bytes] = []
        if settings.retry_ms > 0:  # first, so browsers spread their reconnects from the start
            frames.append(sse.retry_frame(retry_ms(settings.retry_ms, settings.retry_jitter_ms)))
        frames.extend(plan.frames(lookup.snapshot_json))
        if not lookup.is_running and not plan.replay_ends_run:
            frames.append(sse.data_frame(lookup.done_json, plan.done_id))
        body = b"".join(sse.chunk(frame) for frame in frames) if chunked else b"".join(frames)
        return stream_head(chunked, [*self.extra_headers(), *plan.headers()]) + body

    def _take_socket(self) -> Optional[Tuple[socket.socket, bool]]:
        """Detach the connection from Tornado and return its socket, or None if the client left."""
        connection_stream = getattr(self.request.connection, "stream", None)
        if self._client_gone or connection_stream is None or connection_stream.closed():
            return None
        chunked = self.request.version == "HTTP/1.1"
        iostream = self.detach()
        sock = iostream.socket
        # Tornado may still watch the descriptor for errors; the stream registers its own reader.
        tornado.ioloop.IOLoop.current().remove_handler(sock.fileno())
        iostream.socket = None  # type: ignore[assignment]
        return sock, chunked


class LegacyPrefixRedirectHandler(LenientDecoding):
    """``/api/...`` (not ``/api/v1/...``) -> 308 to ``/api/v1/...``, query string kept (docs/endpoints.md §3)."""

    def _redirect(self) -> None:
        raw_path = self.request.path  # still percent-encoded, as the client sent it
        target = "/api/v1/" + raw_path[len("/api/"):]
        if self.request.query:
            target += "?" + self.request.query
        self.set_status(308)
        self.set_header("Location", target)
        self.finish()

    # Every method, with Tornado's own signature (an alias would need a type: ignore).
    def get(self, *args: str, **kwargs: str) -> None:
        self._redirect()

    def head(self, *args: str, **kwargs: str) -> None:
        self._redirect()

    def post(self, *args: str, **kwargs: str) -> None:
        self._redirect()

    def put(self, *args: str, **kwargs: str) -> None:
        self._redirect()

    def delete(self, *args: str, **kwargs: str) -> None:
        self._redirect()

    def patch(self, *args: str, **kwargs: str) -> None:
        self._redirect()

    def options(self, *args: str, **kwargs: str) -> None:
        self._redirect()


default_handlers = [
    (r"/api/v1/runs/([^/]+)/events", RunEventsHandler),
    (r"/api/(?!v1(?:/|$))(.*)", LegacyPrefixRedirectHandler),
]
