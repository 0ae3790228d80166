"""The wire format: Server-Sent Events frames as bytes. Pure functions, no I/O.

Frames match the Node route byte for byte (docs/stream.md §5): one ``data: <json>`` line and a blank
line, the event type inside the JSON, compact JSON with UTF-8 text, keys in insertion order,
as JavaScript's ``JSON.stringify`` writes it.
"""

from __future__ import annotations

import json
import json.encoder
import re
from decimal import Decimal
from typing import Any, Iterator, Optional

from . import jsontext

HEARTBEAT = b": heartbeat\n\n"

# Lone UTF-16 surrogates cannot be written as UTF-8; JSON.stringify (ES2019) escapes them.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# An event id goes on an ``id:`` line: CR, LF or NUL would end the line early or make browsers
# ignore the id (field injection, CWE-93), so ids holding them are never written.
_ID_FORBIDDEN = re.compile("[\r\n\x00]")


def js_number(value: float) -> str:
    """A float as JavaScript's ``Number.prototype.toString`` writes it (and so JSON.stringify).

    Both use the shortest digits that round-trip; they differ in layout only: JS writes
    ``1`` for 1.0, ``10000000000000000`` for 1e16, ``0.00001`` for 1e-05 and ``1e-7`` for
    1e-07. Non-finite numbers are ``null`` in JSON.stringify.
    """
    if value != value or value in (float("inf"), float("-inf")):
        return "null"
    if value == 0:
        return "0"
    if value < 0:
        return "-" + js_number(-value)
    sign, digit_tuple, exponent = Decimal(repr(value)).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent = int(exponent) + (len(digit_tuple) - len(digits))
    k = len(digits)
    n = exponent + k  # value = 0.<digits> * 10**n
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    power = n - 1
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{mantissa}e{'+' if power > 0 else '-'}{abs(power)}"


class _JsNumberEncoder(json.JSONEncoder):
    """json's pure-Python encoder with JavaScript's number layout; only used when it matters."""

    def iterencode(self, o: Any, _one_shot: bool = False) -> Iterator[str]:
        encoder = json.encoder.encode_basestring  # ensure_ascii=False: UTF-8 text, as JS writes it
        return json.encoder._make_iterencode(  # type: ignore[attr-defined,no-any-return]
            {}, self.default, encoder, None, js_number, ":", ",", False, False, _one_shot
        )(o, 0)


_JS_ENCODER = _JsNumberEncoder(ensure_ascii=False, separators=(",", ":"))
# One encoder for every event: json.dumps with arguments builds a JSONEncoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True)
# Python writes a float differently from JS only as NaN/Infinity, with a trailing ".0", or with
# an exponent; the search may also match inside a string, which only costs the slower encoder.
_PYTHON_ONLY_NUMBER = re.compile(r"NaN|Infinity|\.0(?=[,\]}]|$)|[0-9]e[-+]")


def _may_differ_from_js(text: str) -> bool:
    """Whether ``text`` holds what every match of _PYTHON_ONLY_NUMBER holds: ``in`` rules out
    most events several times faster than the search (a log line's stamp holds ".0" but not
    ".0" before a comma or bracket)."""
    return ("e+" in text or "e-" in text or ".0," in text or ".0}" in text or ".0]" in text or "NaN" in text
            or "Infinity" in text or text.endswith(".0"))


def dumps_js(value: Any) -> str:
    """JSON text as ``JSON.stringify(value)`` writes it for JSON-shaped values."""
    text: str = _ENCODER.encode(value)
    if _may_differ_from_js(text) and _PYTHON_ONLY_NUMBER.search(text):
        text = _JS_ENCODER.encode(value)
    return text


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


# A snapshot's agent event and its live frame are matched by the frame's JSON text, prefixed so
# that it can never equal a log line.
AGENT_EVENT_KEY_PREFIX = "\x00agent_event:"


def agent_event_key(event_json: str) -> str:
    return AGENT_EVENT_KEY_PREFIX + event_json


def log_message_of(frame: bytes) -> Optional[str]:
    """The ``message`` of a ``log`` event frame, or an ``agent_event`` frame's key (its JSON text),
    else None: what a snapshot may already hold (read only when a stream opens)."""
    is_log = b'"type":"log"' in frame
    if not is_log and b'"type":"agent_event"' not in frame:
        return None
    for line in frame.split(b"\n"):
        if line.startswith(b"data: "):
            text = line[len(b"data: "):]
            if not is_log:
                return agent_event_key(text.decode("utf-8", "replace")) if text.startswith(
                    b'{"type":"agent_event",') else None
            try:
                event = jsontext.loads(text)
            except ValueError:  # relayed frames come from other processes: too deep included
                return None
            message = event.get("message") if isinstance(event, dict) and event.get("type") == "log" else None
            return message if isinstance(message, str) else None
    return None


def retry_frame(retry_ms: int) -> bytes:
    return b"retry: %d\n\n" % retry_ms


def chunk(payload: bytes) -> bytes:
    """HTTP/1.1 chunked transfer coding of one piece of the response body."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


LAST_CHUNK = b"0\r\n\r\n"
CHUNKED_HEARTBEAT = chunk(HEARTBEAT)
