"""Tornado's ``xheaders``, skipped for the requests that carry none.

With ``xheaders=True`` Tornado rewrites a request's ``remote_ip`` and ``protocol`` from the
headers a proxy adds (``X-Real-Ip``, ``X-Forwarded-For``, ``X-Scheme``, ``X-Forwarded-Proto``)
and, when a request has none of them, still checks the socket's own peer address with
``getaddrinfo`` on every request of the connection: 3 % of the IOLoop's time (GIL held) at a few
thousand publishes a second over kept-alive connections (py-spy over
``bench/publish_cost.py``). Without those headers the rewrite changes nothing, so it is not
done; with any of them it is Tornado's own, unchanged.
"""

from __future__ import annotations

from typing import Any, List, Optional

from tornado import httputil
from tornado.httpserver import _HTTPRequestContext

PROXY_HEADERS = ("X-Real-Ip", "X-Forwarded-For", "X-Scheme", "X-Forwarded-Proto")


class RequestContext(_HTTPRequestContext):
    """``server``: the server whose connection this is (a publish connection hands its socket back
    to it, handlers/publish_connection.py); None where Tornado's own server made the connection."""

    def __init__(self, stream: Any, address: Any, protocol: Optional[str],
                 trusted_downstream: Optional[List[str]] = None, server: Any = None) -> None:
        super().__init__(stream, address, protocol, trusted_downstream)
        self.server = server

    def _apply_xheaders(self, headers: httputil.HTTPHeaders) -> None:
        for name in PROXY_HEADERS:
            if name in headers:
                super()._apply_xheaders(headers)
                return
