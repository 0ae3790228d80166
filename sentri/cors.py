"""CORS for a browser frontend on another origin: ``EventSource(url, {withCredentials: true})``.

With credentials the browser accepts only its own origin echoed back (never ``*``) plus
``Access-Control-Allow-Credentials: true``; an origin not in ``CORS_ORIGIN`` gets no CORS
headers at all, so the browser refuses the response. ``Vary: Origin`` goes on every response
of a server that has CORS configured, so a shared cache never hands one origin's answer to another.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

ALLOW_METHODS = "GET, OPTIONS"
# What EventSource and fetch-based SSE clients send: auth header and the resume header.
ALLOW_HEADERS = "Authorization, Last-Event-ID, Cache-Control, Content-Type"
PREFLIGHT_MAX_AGE_S = 600


def is_allowed(origin: Optional[str], allowed: Sequence[str]) -> bool:
    return bool(origin) and origin in allowed


def cors_headers(origin: Optional[str], allowed: Sequence[str]) -> List[Tuple[str, str]]:
    """Headers for a response to a request from ``origin`` (none when CORS is not configured)."""
    if not allowed:
        return []
    if origin is None or not is_allowed(origin, allowed):
        return [("Vary", "Origin")]
    return [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Credentials", "true"),
        ("Vary", "Origin"),
    ]


def preflight_headers() -> List[Tuple[str, str]]:
    """Extra headers answering an allowed origin's ``OPTIONS`` preflight."""
    return [
        ("Access-Control-Allow-Methods", ALLOW_METHODS),
        ("Access-Control-Allow-Headers", ALLOW_HEADERS),
        ("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE_S)),
    ]
