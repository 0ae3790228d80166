"""``POST /api/v1/runs/{runId}/events``: publish an event over HTTP, for producers in any language.

Body: a JSON object ``{"type": ..., ...payload}``; answer ``202 {"id": ...}`` (the event's
id). Or a batch: a JSON array of such objects, or NDJSON (``Content-Type:
application/x-ndjson``, one object per line); answer ``202 {"ids": [...]}`` in order. Every
event of a batch is checked before any is stored: one bad event refuses the whole batch with
its ``index`` in the error. Authorised by ``Authorization: Bearer <SENTRI_PUBLISH_TOKEN>`` (constant-time compare).
With no token configured the endpoint does not exist: 404, the same answer as any unknown
path, so an unconfigured server does not advertise it.

Checks, in order, each with its own JSON error: token (401), declared body size (413, before
a byte of the body is read), body size as read (413), JSON (400), nesting at most
``sentri.jsontext.MAX_DEPTH`` levels (400), object (400), type and payload (400), run (404).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any, Dict, List, Mapping, Optional, Tuple

import tornado.web
from tornado.routing import Matcher, PathMatches

from sentri import jsontext
from sentri.config import Settings
from sentri.event_intake import InvalidEventError, PreparedEvent, Publisher, prepare
from sentri.group_commit import RunNotFoundError, ShuttingDownError

from .base import SHUTTING_DOWN, ApiError, JsonHandler

NOT_FOUND = {"error": "not found"}
TOKEN_REQUIRED = {"error": "publish token required"}
TOKEN_INVALID = {"error": "invalid publish token"}
NOT_JSON = {"error": "body is not valid JSON"}
NOT_AN_OBJECT = {"error": "body must be a JSON object"}
TOO_DEEP = {"error": f"body must not nest arrays and objects more than {jsontext.MAX_DEPTH} levels deep"}
DATABASE_UNAVAILABLE = {"error": "database unavailable", "retryAfter": 1}
# The process exits with this publish still unfinished (Publisher.close's bound passed): it may
# or may not have been stored, so it is not a 503 (which promises nothing was).
INTERRUPTED = {"error": "server stopped before the publish finished: it may have been stored", "retryAfter": 1}
RUN_NOT_FOUND = {"error": "run not found"}
NOT_AN_EVENT = {"error": "an event must be a JSON object"}
EMPTY_BATCH = {"error": "a batch needs at least one event"}
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines")
TYPE_REQUIRED = "type must be a short lowercase word (a-z, 0-9, _; at most 32 characters)"


def too_large(limit: int) -> dict:  # type: ignore[type-arg]
    return {"error": "request body too large", "maxBytes": limit}


def at(index: Optional[int], body: Dict[str, Any]) -> Dict[str, Any]:
    """An error body naming the batch event it is about (a single event: no index)."""
    return body if index is None else {**body, "index": index}


def encoded_size(event: Dict[str, Any]) -> int:
    """Bytes of an event's compact UTF-8 JSON (about what it costs every listener)."""
    return len(json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def is_ndjson(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in NDJSON_TYPES


class MethodAndPath(Matcher):
    """A route for one method only, so POST and GET of one path go to different handlers."""

    def __init__(self, method: str, pattern: str) -> None:
        self.method = method
        self.path = PathMatches(pattern)

    def match(self, request: Any) -> Optional[dict]:  # type: ignore[type-arg]
        if request.method != self.method:
            return None
        return self.path.match(request)

    def reverse(self, *args: Any) -> Optional[str]:
        return self.path.reverse(*args)


def head_refusal(settings: Settings, headers: Mapping[str, str]) -> Optional[ApiError]:
    """Checks 1-4, on the head alone: the error to answer before a byte of the body is read, or None."""
    expected = settings.publish_token
    if not expected:
        return ApiError(404, NOT_FOUND)
    scheme, _, given = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return ApiError(401, TOKEN_REQUIRED)
    if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected.encode("utf-8")):
        return ApiError(401, TOKEN_INVALID)
    declared = headers.get("Content-Length")
    if declared is not None and (not declared.isdigit() or int(declared) > settings.publish_max_bytes):
        return ApiError(413, too_large(settings.publish_max_bytes))
    return None


def read_events(raw: bytes, content_type: str, settings: Settings) -> Tuple[List[PreparedEvent], bool]:
    """Checks 6-9 on a whole body: its events, checked and in published form, and whether it
    is a batch (an array, or NDJSON); raises the ``ApiError`` of the first check that fails."""
    items, batch = _parse(raw, content_type)
    if batch and not items:
        raise ApiError(400, EMPTY_BATCH)
    max_events = settings.publish_max_events
    if len(items) > max_events:
        raise ApiError(413, {"error": "too many events in one request", "maxEvents": max_events})
    # No event can be larger than the whole body: only a large body is measured per event.
    max_event = settings.publish_max_event_bytes
    measure = len(raw) > max_event
    events = [_check(item, index if batch else None, max_event if measure else 0)
              for index, item in enumerate(items)]
    return events, batch


async def publish_events(publisher: Optional[Publisher], run_id: str,
                         events: List[PreparedEvent]) -> List[Optional[str]]:
    """Checks 10-11 and the publish: the events' ids once they are committed and delivered.

    Raises the ``ApiError`` to answer (404, 503); ``CancelledError`` passes through (the
    process exits with the publish unfinished: the caller answers ``INTERRUPTED``).
    """
    if publisher is None:
        raise ApiError(404, NOT_FOUND)
    if len(run_id) > 128:
        raise ApiError(404, RUN_NOT_FOUND)
    try:
        # The run's check rides in the database turn that stores the events (group commit).
        return await publisher.publish_prepared(run_id, events, require_run=True)
    except RunNotFoundError:
        raise ApiError(404, RUN_NOT_FOUND) from None
    except ShuttingDownError:
        raise ApiError(503, SHUTTING_DOWN) from None
    except Exception as error:  # the store refused the write: nothing was published; retry later
        # Its Retry-After header comes from the body's retryAfter (JsonHandler.write_error).
        raise ApiError(503, DATABASE_UNAVAILABLE, f"publish failed: {type(error).__name__}") from None


def accepted(ids: List[Optional[str]], batch: bool) -> Dict[str, Any]:
    """The 202's body."""
    return {"ids": ids} if batch else {"id": ids[0]}


@tornado.web.stream_request_body
class PublishEventHandler(JsonHandler):
    """The route's handler; ``handlers/publish_fast.py`` serves most publishes without it and
    hands it the requests it does not take (``PublishRequest``)."""

    _body: List[bytes]
    _received = 0
    _too_large = False

    def prepare(self) -> None:
        # Runs before the body is read: refuse here and an oversized body is never buffered.
        refusal = head_refusal(self.context.settings, self.request.headers)
        if refusal is not None:
            raise refusal
        # Tornado itself then stops a chunked body that grows past the limit.
        connection = self.request.connection
        if connection is not None and hasattr(connection, "set_max_body_size"):
            connection.set_max_body_size(self.context.settings.publish_max_bytes)
        self._body = []

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        # The count only grows: once past the bound, every later chunk is past it too.
        if self._received > self.context.settings.publish_max_bytes:
            self._too_large = True
            self._body = []
        else:
            self._body.append(chunk)

    async def post(self, run_id: str) -> None:
        settings = self.context.settings
        if self._too_large:
            raise ApiError(413, too_large(settings.publish_max_bytes))
        events, batch = read_events(b"".join(self._body), self.request.headers.get("Content-Type", ""), settings)
        try:
            ids = await publish_events(self.context.publisher, run_id, events)
        except asyncio.CancelledError:
            # Answered here: Tornado answers its own cancelled request with a bare 500.
            self.set_header("Retry-After", "1")
            self.write_json(INTERRUPTED, status=504)
            raise
        self.write_json(accepted(ids, batch), status=202)


def _parse(raw: bytes, content_type: str) -> Tuple[List[Any], bool]:
    """The body's events and whether it is a batch (an array, or NDJSON)."""
    if is_ndjson(content_type):
        lines = [line for line in raw.split(b"\n") if line.strip()]
        return [_loads(line, index) for index, line in enumerate(lines)], True
    # An array holds its events one level down: the events themselves keep the bound.
    batch = raw.lstrip()[:1] == b"["
    body = _loads(raw, None, jsontext.MAX_DEPTH + 1 if batch else jsontext.MAX_DEPTH)
    if isinstance(body, list):
        return body, True
    return [body], False


def _loads(raw: bytes, index: Optional[int], max_depth: int = jsontext.MAX_DEPTH) -> Any:
    try:
        return jsontext.loads(raw, max_depth)
    except jsontext.TooDeepError:
        raise ApiError(400, at(index, TOO_DEEP)) from None
    except ValueError:  # a bad byte (UnicodeDecodeError) included
        raise ApiError(400, at(index, NOT_JSON)) from None


def _check(item: Any, index: Optional[int], max_event_bytes: int) -> PreparedEvent:
    if not isinstance(item, dict):
        raise ApiError(400, NOT_AN_OBJECT if index is None else at(index, NOT_AN_EVENT))
    event_type = item.get("type")
    if not isinstance(event_type, str):
        raise ApiError(400, at(index, {"error": TYPE_REQUIRED}))
    if max_event_bytes and encoded_size(item) > max_event_bytes:
        raise ApiError(413, at(index, {"error": "event too large", "maxBytes": max_event_bytes}))
    try:
        return PreparedEvent(event_type, *prepare(event_type, item))
    except InvalidEventError as error:
        raise ApiError(400, at(index, {"error": str(error)})) from None


PUBLISH_PATH = r"/api/v1/runs/([^/]+)/events$"

# The route as a handler alone; the application routes it to ``handlers.publish_fast.PublishRoute``,
# which hands this handler what it does not serve itself.
default_handlers = [
    (MethodAndPath("POST", PUBLISH_PATH), PublishEventHandler),
]
