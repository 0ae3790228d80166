"""``POST /api/v1/runs/{runId}/events`` without a ``RequestHandler`` for the publishes that are accepted.

Producers publish one stored ``log`` per request by the thousand a second, and the request
was CPU-bound on the IOLoop: a ``RequestHandler`` per publish (its construction and header
defaults, routing to it, its ``_execute`` task, ``finish``/``flush``) was about a fifth of the
IOLoop thread's time per publish (py-spy over ``bench/publish_cost.py``). Here Tornado's
HTTP/1 layer hands the parsed request to a small ``HTTPMessageDelegate`` that runs the checks
of ``handlers/publish_api.py`` (the same functions, in the same order) and writes the ``202``
itself.

Everything else keeps the handler pipeline, so its bytes, warnings and access lines are those
of the route's ``PublishEventHandler``:

* a request whose head is refused (no token configured, 401, a declared size over the bound),
  whose body is not declared (chunked: Tornado's bound and the handler's own count), or whose
  run id is not UTF-8, is handed to ``PublishEventHandler`` before its body is read;
* a refusal found later (a bad body, an unknown run, a database that fails, the 503 and 504
  of a stopping instance, anything unexpected: a 500) is raised or written by ``PublishAnswer``,
  a ``JsonHandler`` run through Tornado's own ``_execute``, as ``RunEventsAnswer`` does for
  streams (awaited in the publish's own task, so it goes out in the same loop turn).

A ``202`` still means committed: the delegate awaits the same ``publish_events`` as the handler.
"""

from __future__ import annotations

import asyncio
import http.client
from typing import Any, Dict, List, Optional, Union

from tornado import httputil

from sentri.context import Context
from sentri.logs import log_access
from sentri.sse import dumps_js

from .base import DelegateRoute, JsonHandler
from .publish_api import (
    INTERRUPTED,
    PublishEventHandler,
    accepted,
    head_refusal,
    publish_events,
    read_events,
)
from .publish_connection import accepted_headers, take_over

ACCEPTED = httputil.ResponseStartLine("", 202, http.client.responses[202])


class PublishRoute(DelegateRoute):
    """The POST route's target: a ``PublishRequest`` per request; the requests it does not answer
    itself go to ``PublishEventHandler`` or ``PublishAnswer`` of the application."""

    def find_handler(self, request: httputil.HTTPServerRequest, **kwargs: Any) -> httputil.HTTPMessageDelegate:
        # Tornado has unquoted the path argument to bytes; the handler decodes it (a 400 if not UTF-8).
        return PublishRequest(self, request, kwargs["path_args"][0] or b"")


class PublishRequest(httputil.HTTPMessageDelegate):
    """One POST of the events route: its checks, its publish, its ``202``; or the handler's answer."""

    # PublishEventHandler's delegate, when the head shows this request is not one to take.
    handler: Optional[httputil.HTTPMessageDelegate] = None
    run_id = ""

    def __init__(self, route: PublishRoute, request: httputil.HTTPServerRequest, raw_run_id: bytes) -> None:
        self.route = route
        self.request = request
        self.raw_run_id = raw_run_id
        self.chunks: List[bytes] = []

    # -- HTTPMessageDelegate ------------------------------------------------------------------

    def headers_received(self, start_line: Union[httputil.RequestStartLine, httputil.ResponseStartLine],
                         headers: httputil.HTTPHeaders) -> Optional[Any]:
        if self._takes(headers):
            return None
        self.handler = self.route.the_application().get_handler_delegate(
            self.request, PublishEventHandler, {"context": self.route.context}, path_args=[self.raw_run_id])
        return self.handler.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Optional[Any]:
        if self.handler is not None:
            return self.handler.data_received(chunk)
        self.chunks.append(chunk)
        return None

    def finish(self) -> None:
        if self.handler is not None:
            self.handler.finish()
            return
        self.route.serve(self._serve(self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)))

    def on_connection_close(self) -> None:
        # The client left before its body was read: nothing was checked or published.
        if self.handler is not None:
            self.handler.on_connection_close()

    # -- the publish ------------------------------------------------------------------------

    def _takes(self, headers: httputil.HTTPHeaders) -> bool:
        """Whether this request is served here: its head passes checks 1-4 and declares its size."""
        if headers.get("Content-Length") is None:
            return False
        if head_refusal(self.route.context.settings, headers) is not None:
            return False
        try:
            self.run_id = self.raw_run_id.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    async def _serve(self, raw: bytes) -> None:
        context = self.route.context
        try:
            events, batch = read_events(raw, self.request.headers.get("Content-Type", ""), context.settings)
            ids = await publish_events(context.publisher, self.run_id, events)
        except asyncio.CancelledError:
            # The process exits with this publish unfinished: as the handler, 504 (it may be stored).
            await self._answer(PublishAnswer.INTERRUPTED)
            raise
        except Exception as error:  # ApiError, and anything unexpected: a 500 as Tornado gives it
            await self._answer(error)
            return
        self._accept(accepted(ids, batch))

    def _accept(self, body: Dict[str, Any]) -> None:
        """The ``202``, with the headers and bytes ``JsonHandler.write_json`` gives it, and its access line."""
        data = dumps_js(body).encode("utf-8")
        headers = httputil.HTTPHeaders()
        for name, value in accepted_headers(data, self.request.headers.get("Origin"),
                                            self.route.context.settings.cors_origin):
            headers[name] = value
        connection = self.request.connection
        if connection is None:  # only a request built by hand has none
            return
        # A client gone meanwhile: both are no-ops on a closed stream, as for a handler's finish().
        connection.write_headers(ACCEPTED, headers, data)
        connection.finish()
        log_access(self.request, 202)
        # The producer's next requests on this connection are read by the route itself.
        take_over(self.route, self.request)

    # -- answers that are not a 202 -----------------------------------------------------------

    async def _answer(self, answer: Union[Exception, str]) -> None:
        """Write ``answer`` through Tornado's own handler pipeline, as ``PublishAnswer``.

        What ``_HandlerDelegate.execute`` runs, but awaited here instead of in a task of its own:
        the answer goes out in this loop turn, as the handler's did. A stopping instance gives
        the publishes it refuses one loop turn to answer before it closes its database, which
        blocks the loop (``Publisher.close``, tests/test_publish_shutdown.py).
        """
        application = self.route.the_application()
        handler = PublishAnswer(application, self.request, context=self.route.context, answer=answer)
        await handler._execute([transform(self.request) for transform in application.transforms])

class PublishAnswer(JsonHandler):
    """Writes a publish's answer that is not a ``202``, exactly as ``PublishEventHandler`` did.

    Raising the error here lets ``RequestHandler`` log it (a warning for a logged ``ApiError``,
    the 500's traceback type) and write the JSON error; ``INTERRUPTED`` is the 504 the handler
    writes when the process exits with its publish unfinished. Either way the access line is
    the usual one.
    """

    INTERRUPTED = "interrupted"

    def initialize(self, context: Context, answer: Union[Exception, str]) -> None:  # type: ignore[override]
        super().initialize(context)
        self.answer = answer

    def post(self) -> None:
        if isinstance(self.answer, Exception):
            raise self.answer
        self.set_header("Retry-After", "1")
        self.write_json(INTERRUPTED, status=504)

