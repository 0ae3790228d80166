"""The raw HTTP response head written before a stream's first frame.

Streams leave Tornado once their request is checked, so the head is written here, in the
same socket write as the snapshot. Headers are the Node route's (docs/stream.md §4).
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Iterable, Tuple

STREAM_HEADERS: Tuple[Tuple[str, str], ...] = (
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    ("Connection", "keep-alive"),
    ("X-Accel-Buffering", "no"),
)


# The last Date value made, by whole second: a storm's connects in one second share it
# (formatting one costs about as much as the rest of the head).
_last_date: Tuple[int, str] = (-1, "")


def http_date(now: float) -> str:
    global _last_date
    second = int(now)
    if _last_date[0] != second:
        _last_date = (second, formatdate(second, usegmt=True))  # the format has whole seconds
    return _last_date[1]


def stream_head(chunked: bool, extra_headers: Iterable[Tuple[str, str]] = (), now: float = 0.0) -> bytes:
    """``HTTP/1.1 200 OK`` and the stream's headers; chunked for HTTP/1.1 clients, else close-delimited."""
    lines = ["HTTP/1.1 200 OK"]
    lines.extend(f"{name}: {value}" for name, value in STREAM_HEADERS)
    lines.append(f"Date: {http_date(now or time.time())}")
    lines.extend(f"{name}: {value}" for name, value in extra_headers)
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
