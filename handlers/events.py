"""The events route's other methods, and the legacy ``/api/...`` redirect.

``GET /api/v1/runs/{runId}/events`` (a stream) is served without a ``RequestHandler``
(handlers/events_connect.py); its other methods come here: the CORS preflight, and Tornado's
405 for the rest.
"""

from __future__ import annotations

from typing import Optional

from sentri.cors import is_allowed, preflight_headers

from .base import ApiError, JsonHandler
from .events_connect import EVENTS_PATH

ORIGIN_NOT_ALLOWED = {"error": "origin not allowed"}


class LenientDecoding(JsonHandler):
    """Path and query values that are not UTF-8 name nothing; they are refused later, never a 400.

    Tornado answers such bytes with a 400 and a warning holding the whole URL, ``?token=``
    included (docs/settings.md §4). Decoded with U+FFFD instead, a run id fails RUN_ID_PATTERN (404, after
    authentication, as any unknown run) and a token fails verification (401).
    """

    def decode_argument(self, value: bytes, name: Optional[str] = None) -> str:
        return value.decode("utf-8", "replace")


class RunEventsHandler(LenientDecoding):
    """The events path for every method but GET."""

    def options(self, run_id: str) -> None:
        """The CORS preflight of a fetch-based SSE client (headers beyond EventSource's)."""
        origin = self.request.headers.get("Origin")
        if not is_allowed(origin, self.context.settings.cors_origin):
            raise ApiError(403, ORIGIN_NOT_ALLOWED)
        for name, value in preflight_headers():
            self.set_header(name, value)
        self.set_status(204)
        self.finish()


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
    (EVENTS_PATH, RunEventsHandler),  # GET is RunEventsConnects' (routed first, sentri/app.py)
    (r"/api/(?!v1(?:/|$))(.*)", LegacyPrefixRedirectHandler),
]
