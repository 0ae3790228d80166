"""``POST /api/v1/runs/{runId}/events``: publish an event over HTTP, for producers in any language.

Body: a JSON object ``{"type": ..., ...payload}``; answer ``202 {"id": ...}`` (the event's
id). Authorised by ``Authorization: Bearer <SENTRI_PUBLISH_TOKEN>`` (constant-time compare).
With no token configured the endpoint does not exist: 404, the same answer as any unknown
path, so an unconfigured server does not advertise it.

Checks, in order, each with its own JSON error: token (401), declared body size (413, before
a byte of the body is read), body size as read (413), JSON (400), nesting at most
``sentri.jsontext.MAX_DEPTH`` levels (400), object (400), type and payload (400), run (404).
"""

from __future__ import annotations

import hmac
from typing import Any, List, Optional

import tornado.web
from tornado.routing import Matcher, PathMatches

from sentri import jsontext
from sentri.event_intake import InvalidEventError, prepare

from .base import ApiError, JsonHandler

NOT_FOUND = {"error": "not found"}
TOKEN_REQUIRED = {"error": "publish token required"}
TOKEN_INVALID = {"error": "invalid publish token"}
NOT_JSON = {"error": "body is not valid JSON"}
NOT_AN_OBJECT = {"error": "body must be a JSON object"}
TOO_DEEP = {"error": f"body must not nest arrays and objects more than {jsontext.MAX_DEPTH} levels deep"}
DATABASE_UNAVAILABLE = {"error": "database unavailable", "retryAfter": 1}
RUN_NOT_FOUND = {"error": "run not found"}


def too_large(limit: int) -> dict:  # type: ignore[type-arg]
    return {"error": "request body too large", "maxBytes": limit}


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


@tornado.web.stream_request_body
class PublishEventHandler(JsonHandler):
    _body: List[bytes]
    _received = 0
    _too_large = False

    def prepare(self) -> None:
        # Runs before the body is read: refuse here and an oversized body is never buffered.
        expected = self.context.settings.publish_token
        if not expected:
            raise ApiError(404, NOT_FOUND)
        scheme, _, given = (self.request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, TOKEN_REQUIRED)
        if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected.encode("utf-8")):
            raise ApiError(401, TOKEN_INVALID)
        limit = self.context.settings.publish_max_bytes
        declared = self.request.headers.get("Content-Length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise ApiError(413, too_large(limit))
        # Tornado itself then stops a chunked body that grows past the limit.
        connection = self.request.connection
        if connection is not None and hasattr(connection, "set_max_body_size"):
            connection.set_max_body_size(limit)
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
        limit = self.context.settings.publish_max_bytes
        if self._too_large:
            raise ApiError(413, too_large(limit))
        try:
            body = jsontext.loads(b"".join(self._body))
        except jsontext.TooDeepError:
            raise ApiError(400, TOO_DEEP) from None
        except ValueError:  # a bad byte (UnicodeDecodeError) included
            raise ApiError(400, NOT_JSON) from None
        if not isinstance(body, dict):
            raise ApiError(400, NOT_AN_OBJECT)
        event_type = body.get("type")
        if not isinstance(event_type, str):
            raise ApiError(400, {"error": "type must be a short lowercase word (a-z, 0-9, _; at most 32 characters)"})
        publisher = self.context.publisher
        if publisher is None:
            raise ApiError(404, NOT_FOUND)
        try:
            prepare(event_type, body)
        except InvalidEventError as error:
            raise ApiError(400, {"error": str(error)}) from None
        try:
            if len(run_id) > 128 or not await self.context.store.run_exists(run_id):
                raise ApiError(404, RUN_NOT_FOUND)
            event_id = await publisher.publish(run_id, event_type, body)
        except ApiError:
            raise
        except Exception as error:  # the store refused the write: nothing was published; retry later
            self.set_header("Retry-After", "1")
            raise ApiError(503, DATABASE_UNAVAILABLE, f"publish failed: {type(error).__name__}") from None
        self.write_json({"id": event_id}, status=202)


default_handlers = [
    (MethodAndPath("POST", r"/api/v1/runs/([^/]+)/events$"), PublishEventHandler),
]
