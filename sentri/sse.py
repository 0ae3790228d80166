"""The wire format: Server-Sent Events frames as bytes. Pure functions, no I/O.

Frames match the Node route byte for byte (SPEC 1.2): one ``data: <json>`` line and a blank
line, the event type inside the JSON, compact JSON with UTF-8 text, keys in insertion order,
as JavaScript's ``JSON.stringify`` writes it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

HEARTBEAT = b": heartbeat\n\n"

# Lone UTF-16 surrogates cannot be written as UTF-8; JSON.stringify (ES2019) escapes them.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# An event id goes on an ``id:`` line: CR, LF or NUL would end the line early or make browsers
# ignore the id (field injection, CWE-93), so ids holding them are never written.
_ID_FORBIDDEN = re.compile("[\r\n\x00]")


def dumps_js(value: Any) -> str:
    """JSON text as ``JSON.stringify(value)`` writes it for JSON-shaped values."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
    if "NaN" in text or "Infinity" in text:
        # JSON.stringify writes non-finite numbers as null; json.dumps writes bare NaN tokens.
        text = json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"))
    return text


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def to_utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        escaped = _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
        return escaped.encode("utf-8")


def is_valid_event_id(event_id: str) -> bool:
    return bool(event_id) and not _ID_FORBIDDEN.search(event_id)


def data_frame(json_text: bytes, event_id: Optional[str] = None) -> bytes:
    """One event: an optional ``id:`` line, the ``data:`` line, a blank line."""
    if event_id is not None:
        if not is_valid_event_id(event_id):
            raise ValueError("event id must be non-empty and hold no CR, LF or NUL")
        return b"id: " + event_id.encode("utf-8") + b"\ndata: " + json_text + b"\n\n"
    return b"data: " + json_text + b"\n\n"


def event_frame(event: Any, event_id: Optional[str] = None) -> bytes:
    return data_frame(to_utf8(dumps_js(event)), event_id)


def retry_frame(retry_ms: int) -> bytes:
    return b"retry: %d\n\n" % retry_ms


def chunk(payload: bytes) -> bytes:
    """HTTP/1.1 chunked transfer coding of one piece of the response body."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


LAST_CHUNK = b"0\r\n\r\n"
CHUNKED_HEARTBEAT = chunk(HEARTBEAT)
