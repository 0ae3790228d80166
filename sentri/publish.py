"""Publishing run events from worker processes: no server, only ``REDIS_URL``.

``emit(run_id, type, payload)`` writes the SPEC 1.6 message (the event's JSON with this
process's ``_origin`` last) on ``sentri:run:<runId>``, exactly what a Node instance writes,
so every Python and Node instance with listeners for the run delivers it. Synchronous (a
worker is usually not an event loop) and at-most-once like all of pub/sub: an instance that
is not subscribed at that moment does not see the event.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any, Dict, Mapping, Optional

import redis

from .bus import messages as wire


def new_origin() -> str:
    return f"worker_{os.getpid()}_{uuid.uuid4().hex[:12]}"


class RunEventPublisher:
    def __init__(self, redis_url: str, origin: Optional[str] = None, timeout_s: float = 5.0) -> None:
        if not redis_url:
            raise ValueError("REDIS_URL is not set: there is no relay to publish to")
        self.origin = origin or new_origin()
        self._origin_json = wire.origin_json(self.origin)
        self._client = redis.Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def message(self, event_type: str, payload: Optional[Mapping[str, Any]] = None) -> bytes:
        return wire.with_origin(wire.encode_event(event_type, dict(payload or {})), self._origin_json)

    def emit(self, run_id: str, event_type: str, payload: Optional[Mapping[str, Any]] = None) -> int:
        """Publish one event; returns how many instances (subscribers) received it."""
        return int(self._client.publish(wire.run_channel(run_id), self.message(event_type, payload)))

    def close(self) -> None:
        self._client.close()


_default: Optional[RunEventPublisher] = None
_default_lock = threading.Lock()


def emit(run_id: str, event_type: str, payload: Optional[Dict[str, Any]] = None) -> int:
    """Publish with a process-wide publisher on ``REDIS_URL`` (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = RunEventPublisher(os.environ.get("REDIS_URL", ""))
        publisher = _default
    return publisher.emit(run_id, event_type, payload)
