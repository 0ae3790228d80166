"""What every handler shares: JSON errors, a context of services, no stack traces."""

from __future__ import annotations

import asyncio
import http.client
from typing import Any, Coroutine, Dict, List, Optional, Set, Tuple

import tornado.routing
import tornado.web

from sentri.context import Context
from sentri.cors import cors_headers
from sentri.sse import dumps_js

# A draining or exiting instance's answer to any request it will not serve: retry elsewhere.
SHUTTING_DOWN = {"error": "server is shutting down", "retryAfter": 1}
JSON_CONTENT_TYPE = "application/json; charset=utf-8"


class ApiError(tornado.web.HTTPError):
    """An error whose JSON body the client sees as is; ``log_message`` stays server-side."""

    def __init__(self, status_code: int, body: Dict[str, Any], log_message: Optional[str] = None) -> None:
        super().__init__(status_code, log_message)
        self.body = body


class JsonHandler(tornado.web.RequestHandler):
    context: Context

    def initialize(self, context: Context) -> None:
        self.context = context
        self.set_cors_headers()

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        # Also runs when an error clears the response, so JSON errors carry CORS headers too.
        if hasattr(self, "context"):
            self.set_cors_headers()

    def set_cors_headers(self) -> None:
        for name, value in self.cors_headers():
            self.set_header(name, value)

    def cors_headers(self) -> List[Tuple[str, str]]:
        return cors_headers(self.request.headers.get("Origin"), self.context.settings.cors_origin)

    def write_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", JSON_CONTENT_TYPE)
        self.finish(dumps_js(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        error = exc_info[1] if exc_info else None
        if isinstance(error, ApiError):
            body = error.body
        else:
            reason = http.client.responses.get(status_code, "error")
            body = {"error": reason.lower()}
        if isinstance(body.get("retryAfter"), int):
            # send_error cleared the headers set before the raise: the body's hint is the source.
            self.set_header("Retry-After", str(body["retryAfter"]))
        self.set_header("Content-Type", JSON_CONTENT_TYPE)
        self.finish(dumps_js(body))


class NotFoundHandler(JsonHandler):
    """Any path no route claims, for every method."""

    def prepare(self) -> None:
        raise ApiError(404, {"error": "not found"})


class DelegateRoute(tornado.routing.Router):
    """A route served by a small ``HTTPMessageDelegate`` per request instead of a ``RequestHandler``
    (handlers/events_connect.py, handlers/publish_fast.py); the answers it does not write itself
    go through handlers of ``application``, which ``make_app`` sets once the application exists."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.application: Optional[tornado.web.Application] = None
        # asyncio keeps only weak references to tasks: a request still being served is held here.
        self.running: Set[asyncio.Task[None]] = set()

    def the_application(self) -> tornado.web.Application:
        if self.application is None:
            raise RuntimeError(f"{type(self).__name__}.application is not set (make_app sets it)")
        return self.application

    def serve(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run one request's coroutine as a task held until it ends."""
        task = asyncio.ensure_future(coroutine)
        self.running.add(task)
        task.add_done_callback(self.running.discard)
