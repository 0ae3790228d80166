"""Publishing an event, the one way every publisher of this project goes (HTTP API, Python).

A ``log`` is stored in ``run_logs`` (next ``seq`` for the run) before it is fanned out, so a
snapshot read after the event holds it; an ``agent_event`` likewise in ``run_agent_events``
(where a newer Node backend created that table; elsewhere it is only fanned out); a ``done``
updates the run row (status, counters, ``finishedAt``, ``duration``) before it ends the streams.
The database work runs on a database thread (``Store.run``), never on the IOLoop. Then the hub
gives the event its id, delivers it and relays it.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from .group_commit import GroupCommitter
from .hub import DONE, Hub
from .jsontext import MAX_DEPTH, too_deep
from .models import AGENT_EVENT_FRAME_FIELDS, AGENT_PHASES
from .store import Store
from .writes import LOG_LEVELS, Write, fits_integer_column, iso_now, log_message

# How often a closing publisher looks whether its last publishes have finished.
SETTLE_POLL_S = 0.02

LOG = "log"
AGENT_EVENT = "agent_event"
AGENT_EVENT_FIELDS = AGENT_EVENT_FRAME_FIELDS
# ``new Date().toISOString()``, the form createdAt is stored and compared in.
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
# ``done`` statuses a publisher may set: every run status but ``running`` (docs/stream.md §6).
FINISHED_STATUSES = ("completed", "completed_empty", "failed", "aborted", "interrupted")
# Types are short lowercase words (``llm_token``): no control characters, nothing to inject.
EVENT_TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
# A message that already starts with ``[<ISO time>] `` was stamped by its producer.
_STAMPED = re.compile(r"\[\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\] ")


class InvalidEventError(ValueError):
    """An event a publisher may not send; the message is safe to show the publisher."""


class PreparedEvent(NamedTuple):
    """A checked event in its published form (``prepare``)."""

    event_type: str
    body: Dict[str, Any]
    level: Optional[str]

    def write(self, run_id: str) -> Optional[Write]:
        """The durable write this event needs before it is delivered, if any."""
        if self.event_type in (LOG, DONE, AGENT_EVENT):
            return Write(run_id, self.event_type, self.body, self.level or "info")
        return None


def check_depth(payload: Mapping[str, Any]) -> None:
    """Refuse an event nested deeper than every instance's relay and history read back
    (``sentri.jsontext.MAX_DEPTH``); the event object itself is the first level."""
    if too_deep(payload):
        raise InvalidEventError(f"an event must not nest arrays and objects more than {MAX_DEPTH} levels deep")


def prepare(event_type: str, payload: Mapping[str, Any]) -> Tuple[Dict[str, Any], Optional[str]]:
    """Check an event and put it in its published form; returns (payload, log level or None).

    A ``log`` message is stamped ``[<ISO time>] <text>`` (the stored and streamed form) unless
    it already is; its ``level`` (info, warn, error) is stored, not streamed, as in Node.
    """
    if not EVENT_TYPE_PATTERN.fullmatch(event_type):
        raise InvalidEventError("type must be a short lowercase word (a-z, 0-9, _; at most 32 characters)")
    body = {key: value for key, value in payload.items() if key not in ("type", "_origin")}
    check_depth(body)
    level: Optional[str] = None
    if event_type == LOG:
        message = body.get("message")
        if not isinstance(message, str):
            raise InvalidEventError("a log event needs a string message")
        level = body.pop("level", "info")
        if level not in LOG_LEVELS:
            raise InvalidEventError("level must be one of: " + ", ".join(LOG_LEVELS))
        body["message"] = message if _STAMPED.match(message) else log_message(message)
    elif event_type == DONE and body.get("status") not in FINISHED_STATUSES:
        raise InvalidEventError("a done event needs a status: " + ", ".join(FINISHED_STATUSES))
    elif event_type == AGENT_EVENT:
        body = agent_event_body(body)
    return body, level


def agent_event_body(body: Mapping[str, Any]) -> Dict[str, Any]:
    """An ``agent_event`` checked and in its stored and streamed form (``createdAt`` stamped if absent)."""
    unknown = [key for key in body if key not in AGENT_EVENT_FIELDS]
    if unknown:
        raise InvalidEventError("an agent_event has no field " + ", ".join(sorted(unknown)) + "; its fields are: "
                                + ", ".join(AGENT_EVENT_FIELDS))
    step = body.get("step")
    if not fits_integer_column(step):
        raise InvalidEventError(f"an agent_event needs step: an integer from 0 to {2**31 - 1}")
    for key in ("agent", "message"):
        if not isinstance(body.get(key), str):
            raise InvalidEventError(f"an agent_event needs {key}: a string")
    if not body["agent"]:
        raise InvalidEventError("an agent_event needs agent: a non-empty string")
    if body.get("phase") not in AGENT_PHASES:
        raise InvalidEventError("an agent_event needs phase: one of " + ", ".join(AGENT_PHASES))
    for key in ("nextAgent", "model"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise InvalidEventError(f"an agent_event's {key} must be a string or null")
    created_at = body.get("createdAt")
    if created_at is not None and not (isinstance(created_at, str) and _ISO_TIME.fullmatch(created_at)):
        raise InvalidEventError("an agent_event's createdAt must be an ISO-8601 UTC time "
                                "(2026-01-01T00:00:00.000Z) or left out")
    return {
        "step": step,
        "agent": body["agent"],
        "phase": body["phase"],
        "message": body["message"],
        "data": body.get("data"),
        "nextAgent": body.get("nextAgent"),
        "model": body.get("model"),
        "createdAt": created_at or iso_now(),
    }


class Publisher:
    """Stores what must outlive the event (group-committed), then hands it to the hub."""

    def __init__(self, store: Store, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self.committer = GroupCommitter(store)
        # Publishes between their first await and their last delivery (close() waits for them).
        self.in_flight = 0

    async def publish(self, run_id: str, event_type: str, payload: Mapping[str, Any]) -> Optional[str]:
        """Publish one event (raises ``InvalidEventError``); returns its id."""
        return (await self.publish_prepared(run_id, [PreparedEvent(event_type, *prepare(event_type, payload))]))[0]

    async def publish_prepared(self, run_id: str, events: Sequence[PreparedEvent],
                               require_run: bool = False) -> List[Optional[str]]:
        """Store the events' writes in one transaction, then deliver them in order; their ids.

        Nothing is delivered unless every write was committed (the exception is raised).
        ``require_run``: raise ``RunNotFoundError`` unless the run exists and is not deleted
        (checked in the same database turn as the writes).
        """
        writes = [write for write in (event.write(run_id) for event in events) if write is not None]
        self.in_flight += 1
        try:
            await self.committer.commit(writes, run_id if require_run else None)
            if len(events) == 1:
                return [await self.hub.publish(run_id, events[0].event_type, events[0].body)]
            return await self.hub.publish_many(run_id, [(event.event_type, event.body) for event in events])
        finally:
            self.in_flight -= 1

    async def close(self, timeout_s: float) -> int:
        """On shutdown: finish, within ``timeout_s``, the publishes already taken; refuse new ones.

        Without it, the publishes still waiting on the database when the process exits would be
        cancelled, and Tornado answers a cancelled request 500. Here the queued ones whose time
        ran out get ``ShuttingDownError`` (nothing stored: a 503 their producers retry), and the
        ones committed get their deliveries. Returns how many publishes are still unfinished.
        """
        deadline = time.monotonic() + timeout_s
        await self.committer.close(timeout_s)
        # One loop turn: the refused publishes answer (503) before the caller goes on to close the
        # database, which can block the loop while a turn still waits on a lock.
        await asyncio.sleep(0)
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(SETTLE_POLL_S)
        return self.in_flight

    async def log(self, run_id: str, text: str, level: str = "info") -> Optional[str]:
        return await self.publish(run_id, LOG, {"message": text, "level": level})


__all__ = ["AGENT_EVENT", "FINISHED_STATUSES", "InvalidEventError", "PreparedEvent", "Publisher", "check_depth",
           "prepare"]
