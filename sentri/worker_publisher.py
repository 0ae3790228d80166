"""Publishing run events from worker processes: no server, only ``REDIS_URL``.

``emit(run_id, type, payload)`` publishes through the same Lua script as the server
(``sentri.redis_history``): the event is added to the run's Redis stream (its id, kept for
resume and gap repair) and the relay message of docs/relay.md §2 (the event's JSON with
``"_origin":"<worker>|<id>"`` last) goes out on ``sentri:run:<runId>``, so every Python and
Node instance with listeners for the run delivers it. Synchronous (a worker is usually not
an event loop).

Durable logs: given a database (``DATABASE_URL``; ``sentri emit`` passes it when set), a
``log`` is checked, stamped and appended to ``run_logs``, an ``agent_event`` checked and
stored in ``run_agent_events`` (where that table exists) and a ``done`` recorded on the run
row before the event is published, as the server's publishers do (``sentri.event_intake``).
Without one, the worker publishes only: the event is live and in Redis history, but a
snapshot read later does not contain it (the producer stores it itself, as Node producers do).
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any, Dict, Mapping, Optional, Tuple

import peewee
import redis

from .bus import messages as wire
from .config import SETTINGS_BY_NAME, SettingsError
from .redis_history import PUBLISH_SCRIPT, PublishCall, script_result


def new_origin() -> str:
    return f"worker_{os.getpid()}_{uuid.uuid4().hex[:12]}"


def _setting_default(name: str) -> Any:
    return SETTINGS_BY_NAME[name].default


class RunEventPublisher:
    def __init__(self, redis_url: str, origin: Optional[str] = None, timeout_s: float = 5.0,
                 database_url: str = "",
                 history_max_events: int = _setting_default("SENTRI_HISTORY_MAX_EVENTS"),
                 history_done_ttl_s: float = _setting_default("SENTRI_HISTORY_DONE_TTL_S"),
                 history_idle_ttl_s: float = _setting_default("SENTRI_HISTORY_IDLE_TTL_S")) -> None:
        if not redis_url:
            raise ValueError("REDIS_URL is not set: there is no relay to publish to")
        self.origin = origin or new_origin()
        self._origin_json = wire.origin_json(self.origin)
        self._client = redis.Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._script = self._client.register_script(PUBLISH_SCRIPT)
        self._call = PublishCall(self.origin, history_max_events, history_done_ttl_s, history_idle_ttl_s)
        self._database: Optional[peewee.Database] = None
        self._has_agent_events = False
        if database_url:
            from .models import AGENT_EVENTS_TABLE, database_proxy
            from .store import ensure_schema, open_database

            self._database = open_database(database_url, ".", 1)
            database_proxy.initialize(self._database)
            try:
                ensure_schema(self._database)
                with self._database.connection_context():
                    self._has_agent_events = AGENT_EVENTS_TABLE in self._database.get_tables()
            except peewee.DatabaseError as error:  # one line, as the server says it (sentri.app)
                self.close()
                reason = (str(error).strip().splitlines() or [""])[0].strip()
                raise SettingsError(f"DATABASE_URL: cannot open the database ({type(error).__name__}: {reason})") \
                    from None

    def message(self, event_type: str, payload: Optional[Mapping[str, Any]] = None) -> bytes:
        """The message as a plain (id-less) publisher writes it; the script adds the id."""
        return wire.with_origin(wire.encode_event(event_type, dict(payload or {})), self._origin_json)

    def emit(self, run_id: str, event_type: str, payload: Optional[Mapping[str, Any]] = None) -> int:
        """Publish one event; returns how many instances (subscribers) received it."""
        return self.publish(run_id, event_type, payload)[1]

    def publish(self, run_id: str, event_type: str,
                payload: Optional[Mapping[str, Any]] = None) -> Tuple[Optional[str], int]:
        """Store (with a database), then publish one event; returns (its id, receivers).

        Raises ``sentri.event_intake.InvalidEventError`` for an event a database would refuse,
        and for one nested deeper than the instances read (with or without a database).
        """
        from .event_intake import check_depth

        body: Dict[str, Any] = dict(payload or {})
        check_depth(body)
        if self._database is not None:
            body = self._store(run_id, event_type, body)
        event_json = wire.encode_event(event_type, body)
        keys, args = self._call(run_id, event_json, event_type == "done")
        return script_result(self._script(keys=keys, args=args))

    def _store(self, run_id: str, event_type: str, payload: Dict[str, Any]) -> Dict[str, Any]:
        from .event_intake import PreparedEvent, prepare
        from .writes import commit_writes

        body, level = prepare(event_type, payload)
        write = PreparedEvent(event_type, body, level).write(run_id)
        if write is not None and self._database is not None:
            with self._database.connection_context():
                commit_writes([write], self._has_agent_events)
        return body

    def close(self) -> None:
        self._client.close()
        if self._database is not None:
            self._database.close()


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
