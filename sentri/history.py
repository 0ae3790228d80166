"""Event ids and the bounded history of each run's recent events, for ``Last-Event-ID`` resume.

An event id has the shape of a Redis stream entry id, ``<a>-<b>`` (two decimal integers),
compared as the pair. Without Redis, ``MemoryHistory`` makes them here: ``a`` is the
process's start time in milliseconds and ``b`` one counter shared by every run, so an id
increases within its run, never repeats across runs (an id from another run is simply not
found in this one), and ids from before a restart are not mistaken for new ones. With Redis
the ids are the run stream's entry ids, the same on every instance (``sentri.redis_history``).

The interface is asynchronous because the Redis history answers over the network; the
in-process one answers at once.
"""

from __future__ import annotations

import collections
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Deque, List, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from .config import Settings

_ID_PATTERN = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


def id_key(event_id: Optional[str]) -> Optional[Tuple[int, int]]:
    """The comparable form of an event id, or None for anything that is not one (forged, malformed)."""
    if not event_id:
        return None
    match = _ID_PATTERN.fullmatch(event_id)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class Entry:
    """One event as kept in history: its id, its JSON text, whether it is the run's ``done``."""

    event_id: str
    data: bytes
    ends_stream: bool = False


@dataclass(frozen=True)
class Replay:
    """What a client resuming after an id has missed: the entries after it, in order.

    ``client_has_done``: the client's id is the run's ``done`` (or later), so there is nothing
    left to send and the answer is ``204 No Content``.
    """

    entries: List[Entry]
    client_has_done: bool = False

    def __post_init__(self) -> None:
        # Nothing after the run's done: an event can land in history behind it (an outbox of
        # another instance flushed late after a Redis outage, docs/relay.md §6), and a replay
        # that went on would send it after the done, on a stream that must end there (soak).
        for index, entry in enumerate(self.entries):
            if entry.ends_stream:
                del self.entries[index + 1:]
                break

    @property
    def last_id(self) -> Optional[str]:
        return self.entries[-1].event_id if self.entries else None


class History:
    """Where ids come from and recent events are kept. The base keeps nothing (ids off)."""

    #: True when ``append_now`` assigns ids synchronously in this process.
    assigns_here = False
    #: Set while reads fail (Redis away), so the outage is logged once (``sentri.resume``).
    unavailable = False

    def append_now(self, run_id: str, data: bytes, ends_stream: bool) -> Optional[str]:
        """Record an event and return its id at once; None when this history cannot."""
        return None

    async def last_id(self, run_id: str) -> Optional[str]:
        """The id of the run's newest event in history (what a snapshot read now contains)."""
        return None

    async def done_id(self, run_id: str) -> Optional[str]:
        """The id of the run's ``done`` event, when history holds it."""
        return None

    async def replay_after(self, run_id: str, event_id: str) -> Optional[Replay]:
        """The run's events after ``event_id``; None when that id is not in the run's history
        (unknown, malformed, trimmed away, another run's): the client needs a snapshot."""
        return None

    async def warm_up(self) -> None:
        """Make what the first read needs ready (called at start-up; the Redis history asks
        whether it is on a cluster)."""

    async def close(self) -> None:
        """Release connections (the Redis history has some)."""


@dataclass
class _RunLog:
    entries: Deque[Entry] = field(default_factory=collections.deque)
    nbytes: int = 0
    done_id: Optional[str] = None
    touched_at: float = 0.0


class MemoryHistory(History):
    """A bounded ring per run in this process: the single-instance (no Redis) history.

    Bounds: ``max_events`` and ``max_bytes`` per run (the oldest entries fall out first),
    ``max_runs`` runs (the least recently appended run is dropped first); a run is forgotten
    ``done_ttl_s`` after its ``done`` and ``idle_ttl_s`` after its last event.
    """

    assigns_here = True

    def __init__(self, max_events: int, max_bytes: int, max_runs: int, done_ttl_s: float, idle_ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_runs = max_runs
        self.done_ttl_s = done_ttl_s
        self.idle_ttl_s = idle_ttl_s
        self._clock = clock
        self.epoch_ms = int(time.time() * 1000)
        self._counter = 0
        # Ordered by last append: the front holds the runs to expire or evict first.
        self._runs: collections.OrderedDict[str, _RunLog] = collections.OrderedDict()

    def _now(self) -> float:
        return self._clock()

    def _expire(self, now: float) -> None:
        runs = self._runs
        while runs:
            run_id, log = next(iter(runs.items()))
            ttl = self.done_ttl_s if log.done_id is not None else self.idle_ttl_s
            if now - log.touched_at < ttl and len(runs) <= self.max_runs:
                break
            del runs[run_id]

    def _live(self, run_id: str) -> Optional[_RunLog]:
        self._expire(self._now())
        return self._runs.get(run_id)

    def append_now(self, run_id: str, data: bytes, ends_stream: bool) -> str:
        now = self._now()
        log = self._runs.get(run_id)
        if log is None:
            log = self._runs[run_id] = _RunLog()
        else:
            self._runs.move_to_end(run_id)
        log.touched_at = now
        self._counter += 1
        event_id = f"{self.epoch_ms}-{self._counter}"
        log.entries.append(Entry(event_id, data, ends_stream))
        log.nbytes += len(data)
        while len(log.entries) > self.max_events or (log.nbytes > self.max_bytes and len(log.entries) > 1):
            log.nbytes -= len(log.entries.popleft().data)
        if ends_stream:
            log.done_id = event_id
        self._expire(now)
        return event_id

    async def last_id(self, run_id: str) -> Optional[str]:
        log = self._live(run_id)
        return log.entries[-1].event_id if log is not None and log.entries else None

    async def done_id(self, run_id: str) -> Optional[str]:
        log = self._live(run_id)
        return log.done_id if log is not None else None

    async def replay_after(self, run_id: str, event_id: str) -> Optional[Replay]:
        key = id_key(event_id)
        log = self._live(run_id)
        if key is None or log is None:
            return None
        entries = list(log.entries)
        for index, entry in enumerate(entries):
            if entry.event_id == event_id:
                return Replay(entries[index + 1:], client_has_done=entry.ends_stream)
        return None


def history_for(settings: Settings) -> History:
    """The in-process history sized by the SENTRI_HISTORY_* settings."""
    return MemoryHistory(
        max_events=int(settings.history_max_events),
        max_bytes=int(settings.history_max_bytes),
        max_runs=int(settings.history_max_runs),
        done_ttl_s=float(settings.history_done_ttl_s),
        idle_ttl_s=float(settings.history_idle_ttl_s),
    )


__all__ = ["Entry", "History", "MemoryHistory", "Replay", "history_for", "id_key"]
