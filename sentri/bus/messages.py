"""The relay's message format (docs/relay.md §2), shared by the server and worker publishers. Pure.

A message on ``sentri:run:<runId>`` is the event's JSON with one more key, ``_origin``, the
publishing process's id, written last as the Node seed writes it
(``JSON.stringify({type, ...payload, _origin})``).
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, NamedTuple, Optional, Tuple

from .. import jsontext, sse

RUN_CHANNEL_PREFIX = "sentri:run:"
TOKEN_REVOKED_CHANNEL = "sentri:token:revoked"  # noqa: S105 - a channel name, not a secret
REVOKED_KEY_PREFIX = "sentri:revoked:"
ORIGIN_KEY = "_origin"
# The origin flag of an event already delivered to the publishing instance's own listeners
# (published late, after an outage): that instance drops its echo and skips it when catching up.
DELIVERED_HERE = "local"

_ORIGIN_TAIL = b',"' + ORIGIN_KEY.encode() + b'":'


def run_channel(run_id: str) -> str:
    return RUN_CHANNEL_PREFIX + run_id


def run_id_of(channel: str) -> Optional[str]:
    if channel.startswith(RUN_CHANNEL_PREFIX) and len(channel) > len(RUN_CHANNEL_PREFIX):
        return channel[len(RUN_CHANNEL_PREFIX):]
    return None


def origin_json(origin: str) -> bytes:
    return sse.to_utf8(json.dumps(origin, ensure_ascii=False))


def with_origin(event_json: bytes, origin_as_json: bytes) -> bytes:
    """Append ``"_origin"`` as the last key by splicing bytes: the event is not re-encoded."""
    return event_json[:-1] + _ORIGIN_TAIL + origin_as_json + b"}"


def encode_event(event_type: str, payload: Optional[Dict[str, Any]] = None) -> bytes:
    """An event's JSON as every listener receives it: ``type`` first, then the payload."""
    event: Dict[str, Any] = {"type": event_type}
    if payload:
        event.update(payload)
        event.pop(ORIGIN_KEY, None)
    return sse.to_utf8(sse.dumps_js(event))


class Relayed(NamedTuple):
    event_type: str
    event_json: bytes  # what a client receives: the message without ``_origin``
    event_id: Optional[str] = None  # from ``"_origin":"<instance>|<id>"`` (sentri.redis_history)
    own: bool = False  # published by this process: its own listeners get it from this echo
    # Own and flagged ``|local``: its listeners had it during an outage, only later ones need it.
    delivered_here: bool = False


def decode_relayed(message: bytes, own_origin: str) -> Optional[Relayed]:
    """The event carried by a relay message, or None to ignore it (own echo, malformed).

    An ``_origin`` of ``"<instance>|<id>"`` carries the event's id. This process's own events
    with an id come back here to be delivered locally in the channel's order (the order of
    the ids); those flagged as delivered here already come back marked ``delivered_here``
    (only streams that came after that delivery need them); its own echoes without an id
    are dropped.

    A message Node or this project wrote ends with ``,"_origin":"<id>"}`` and the rest is
    already ``JSON.stringify`` output, so cutting that tail off yields exactly the bytes a
    Node instance would send (its re-stringify is then the identity, numbers like ``1e-7``
    included, which Python's encoder would write differently). Anything else is re-encoded.

    Raises ``jsontext.TooDeepError`` for a message nested deeper than ``jsontext.MAX_DEPTH``
    (no publisher of this project sends one): the caller ignores it too, and says so once.
    """
    try:
        event = jsontext.loads(message)
    except jsontext.TooDeepError:
        raise
    except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError)
        return None
    if not isinstance(event, dict):
        return None
    event_type = event.get("type")
    if not isinstance(event_type, str):
        return None
    origin = event.pop(ORIGIN_KEY, None)
    instance, event_id, delivered_here = split_origin(origin) if isinstance(origin, str) else (origin, None, False)
    own = instance == own_origin
    if own and event_id is None:
        return None
    return Relayed(event_type, _without_origin_tail(message, origin) or sse.to_utf8(sse.dumps_js(event)), event_id, own,
                   own and delivered_here)


_ORIGIN_WITH_ID = re.compile(r"(.*)\|([0-9]{1,20}-[0-9]{1,20})(\|" + DELIVERED_HERE + r")?", re.DOTALL)


def split_origin(origin: str) -> Tuple[str, Optional[str], bool]:
    """``"<instance>|<id>[|local]"`` -> (instance, id, delivered by its publisher already).

    A plain ``"<instance>"`` (Node, older publishers) has no id.
    """
    match = _ORIGIN_WITH_ID.fullmatch(origin)
    if match is None:
        return origin, None, False
    return match.group(1), match.group(2), match.group(3) is not None


def _without_origin_tail(message: bytes, origin: Any) -> Optional[bytes]:
    if not isinstance(origin, str):
        return None
    body = message.rstrip(b" \t\r\n")
    start = body.rfind(_ORIGIN_TAIL)
    if start <= 0 or not body.endswith(b"}"):
        return None
    try:
        tail_value = jsontext.loads(body[start + len(_ORIGIN_TAIL):-1])
    except ValueError:
        return None
    kept = body[:start] + b"}"
    # Only compact single-line JSON may be passed through: a raw line break would split the
    # ``data:`` line and let a producer inject frames of its own (CWE-93).
    if tail_value != origin or b"\n" in kept or b"\r" in kept or kept.count(b'"' + ORIGIN_KEY.encode() + b'"'):
        return None
    if b"\\u" in kept:  # JSON.stringify writes UTF-8 text, not \u escapes: re-encode as it would
        return None
    return kept
