"""How a stream starts: a replay of what the client missed, or a snapshot; and the ``retry:`` hint.

A client sends the id of the last event it has (``Last-Event-ID`` header, as EventSource
does on reconnect, or the ``last_event_id`` query parameter for a first connect). When that
id is in the run's history, the stream starts with the events after it (``Sentri-Resume:
replay``); otherwise (unknown, malformed, trimmed, another run's) with the normal snapshot
(``Sentri-Resume: snapshot``), never with another run's events.

Everything here is read AFTER the stream is reserved in the hub (live events are being held)
and BEFORE the database snapshot is read, so the snapshot's id is never newer than what it
contains (at-least-once: an event may be both in a snapshot and after it, none is skipped).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from . import sse
from .history import History, Replay, id_key

log = logging.getLogger("sentri.resume")

RESUME_HEADER = "Sentri-Resume"
REPLAY = "replay"
SNAPSHOT = "snapshot"
# An id longer than any this project makes is not looked up at all.
MAX_ID_LENGTH = 64
# Below every id: what a client that has no event yet "has".
NOTHING_YET = "0-0"


@dataclass(frozen=True)
class StartPlan:
    """What a new stream starts with."""

    asked_to_resume: bool
    replay: Optional[Replay] = None
    snapshot_id: Optional[str] = None  # the id of the newest event the snapshot already contains
    done_id: Optional[str] = None  # the id of the run's ``done`` in history, if there is one
    replay_from: Optional[str] = None  # the client's id, when it is in history
    history_answered: bool = True  # False: history could not be read (Redis away)
    client_through: Optional[str] = None  # the client's id, when history could not be read

    @property
    def replays(self) -> bool:
        return self.replay is not None

    @property
    def client_has_done(self) -> bool:
        return self.replay is not None and self.replay.client_has_done

    @property
    def replay_ends_run(self) -> bool:
        return self.replay is not None and any(entry.ends_stream for entry in self.replay.entries)

    @property
    def known_through(self) -> Optional[str]:
        """The newest id the client has once the stream opened: the replay's or snapshot's;
        ``0-0`` when history was empty (every later event is new to it); None: unknown."""
        if self.replay is not None:
            return self.replayed_through
        if not self.history_answered:
            return self.client_through  # it has what it had: sending that again would repeat it
        if self.snapshot_id is None:
            return NOTHING_YET
        return self.snapshot_id

    @property
    def replayed_through(self) -> Optional[str]:
        """Held live frames up to this id were replayed already (resume), else None (snapshot)."""
        if self.replay is None:
            return None
        return self.replay.last_id or self.replay_from

    @property
    def outcome(self) -> Optional[str]:
        """How a resume was answered (the ``sentri_resume_outcomes_total`` label); None: not asked."""
        if not self.asked_to_resume:
            return None
        if self.client_has_done:
            return "done"
        if self.replays:
            return "replayed"
        return "snapshot" if self.history_answered else "history_unavailable"

    def headers(self) -> List[Tuple[str, str]]:
        if not self.asked_to_resume:
            return []
        return [(RESUME_HEADER, REPLAY if self.replays else SNAPSHOT)]

    def frames(self, snapshot_json: bytes) -> List[bytes]:
        """The event frames that open the stream (the ``done`` on connect is added by the caller)."""
        if self.replay is not None:
            return [sse.data_frame(entry.data, entry.event_id) for entry in self.replay.entries]
        return [sse.data_frame(snapshot_json, self.snapshot_id)]


def requested_id(header: Optional[str], query: Optional[str]) -> Optional[str]:
    """The id the client resumes from: the header (a reconnect) wins over the query parameter."""
    for value in (header, query):
        if value is not None and value.strip():
            return value.strip()
    return None


async def plan_start(history: History, run_id: str, last_event_id: Optional[str]) -> StartPlan:
    """Decide between replay and snapshot; a history that fails means a snapshot, not an error."""
    asked = last_event_id is not None
    valid_id = last_event_id if last_event_id is not None and len(last_event_id) <= MAX_ID_LENGTH \
        and id_key(last_event_id) else None
    try:
        done_id = await history.done_id(run_id)
        replay = await history.replay_after(run_id, valid_id) if valid_id is not None else None
        if replay is not None:
            plan = StartPlan(True, replay=replay, done_id=done_id, replay_from=valid_id)
        else:
            plan = StartPlan(asked, snapshot_id=await history.last_id(run_id), done_id=done_id)
    except Exception as error:  # a history that cannot answer (Redis away) costs a snapshot
        if not history.unavailable:  # one line per outage, not one per connect
            history.unavailable = True
            log.warning("history unavailable, sending snapshots until it answers (%s)", type(error).__name__)
        return StartPlan(asked, history_answered=False, client_through=valid_id)
    if history.unavailable:
        history.unavailable = False
        log.info("history available again")
    return plan


def retry_ms(base_ms: int, jitter_ms: int, draw: Callable[[int, int], int] = random.randint) -> int:
    """This connection's reconnection delay: the base plus its own random share of the jitter."""
    return base_ms + (draw(0, jitter_ms) if jitter_ms > 0 else 0)


__all__ = ["RESUME_HEADER", "StartPlan", "plan_start", "requested_id", "retry_ms"]
