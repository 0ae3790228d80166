"""What every handler shares: JSON errors, a context of services, no stack traces."""

from __future__ import annotations

import http.client
from typing import Any, Dict, Optional

import tornado.web

from sentri.context import Context
from sentri.sse import dumps_js


class ApiError(tornado.web.HTTPError):
    """An error whose JSON body the client sees as is; ``log_message`` stays server-side."""

    def __init__(self, status_code: int, body: Dict[str, Any], log_message: Optional[str] = None) -> None:
        super().__init__(status_code, log_message)
        self.body = body


class JsonHandler(tornado.web.RequestHandler):
    context: Context

    def initialize(self, context: Context) -> None:
        self.context = context

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    def write_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(dumps_js(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        error = exc_info[1] if exc_info else None
        if isinstance(error, ApiError):
            body = error.body
        else:
            reason = http.client.responses.get(status_code, "error")
            body = {"error": reason.lower()}
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(dumps_js(body))


class NotFoundHandler(JsonHandler):
    """Any path no route claims, for every method."""

    def prepare(self) -> None:
        raise ApiError(404, {"error": "not found"})
