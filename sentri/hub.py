"""The registry of open streams: run id -> its listeners; fan-out, heartbeats, one teardown.

Each event is encoded once (``Frame``) and the same bytes are written to every listener.
Heartbeats come from one shared timer, not one per stream: streams are spread over the
slots of a wheel that turns once per heartbeat interval, so each stream gets its comment
every interval and the writes are spread evenly instead of bursting.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import AbstractSet, Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from tornado.ioloop import PeriodicCallback

from . import sse
from .bus import Bus
from .history import History, id_key
from .stream import HEARTBEAT_FRAME, CloseReason, EventStream, Frame

log = logging.getLogger("sentri.hub")

DONE = "done"
WHEEL_SLOTS = 10
# Each stream's age bound is shortened by up to this fraction, so streams opened together
# (after a restart) do not all expire, and reconnect, together.
MAX_AGE_JITTER = 0.1


class HubObserver:
    """What the hub reports as it works; metrics and logs implement it. Calls are per event, not per write."""

    def stream_opened(self, stream: EventStream) -> None:
        pass

    def stream_closed(self, stream: EventStream) -> None:
        pass

    def event_delivered(self, run_id: str, listeners: int, nbytes: int) -> None:
        pass

    def heartbeats_sent(self, count: int) -> None:
        pass

    def event_emitted(self, run_id: str) -> None:
        """An event was emitted on this instance (before local delivery and relay)."""

    def resume_outcome(self, kind: str) -> None:
        """A client sent Last-Event-ID; ``kind`` (``StartPlan.outcome``) says how it was answered."""


class Hub:
    def __init__(
        self,
        heartbeat_interval_s: float,
        max_listeners_per_run: int,
        max_writable_bytes: int,
        bus: Optional[Bus] = None,
        observer: Optional[HubObserver] = None,
        max_stream_age_s: float = 0.0,
        history: Optional[History] = None,
    ) -> None:
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_stream_age_s = max_stream_age_s
        self.max_listeners_per_run = max_listeners_per_run
        self.max_writable_bytes = max_writable_bytes
        self.bus = bus or Bus()
        self.observer = observer or HubObserver()
        # Where event ids come from and recent events are kept for resume (sentri.history).
        self.history = history or History()
        self.runs: Dict[str, Set[EventStream]] = {}
        # Per run with listeners, a version that changes with every event delivered to it (and
        # is new each time the run gains its first listener): a snapshot read at one version
        # may be shared by streams reserved while it is still current (Store.open_stream).
        self._versions: Dict[str, int] = {}
        self._version_clock = 0
        # Per run with listeners, the newest event id delivered here: where the relay's gap
        # repair starts for a listener that went live without knowing its position (a snapshot
        # without an id, read while history was unreadable).
        self._newest: Dict[str, Tuple[Tuple[int, int], str]] = {}
        self._wheel: List[Set[EventStream]] = [set() for _ in range(WHEEL_SLOTS)]
        self._cursor = 0
        self._ticker: Optional[PeriodicCallback] = None
        self._turned_at: Optional[float] = None  # when the wheel last turned (monotonic)
        self.bus.attach(self)

    # -- timers -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._ticker is None:
            self._ticker = PeriodicCallback(self._tick, self.heartbeat_interval_s * 1000 / WHEEL_SLOTS)
            self._ticker.start()

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None
            self._turned_at = None

    def _tick(self) -> None:
        # Tornado's PeriodicCallback skips the ticks a busy loop ran too late for (a connect
        # storm can stall it for a second); a skipped slot would miss its heartbeat for a whole
        # interval. So turn the wheel by every tick that has elapsed, at most one full turn.
        now = time.monotonic()
        tick_s = self.heartbeat_interval_s / WHEEL_SLOTS
        turned_at = self._turned_at
        steps = 1 if turned_at is None else min(WHEEL_SLOTS, max(1, int((now - turned_at) / tick_s + 0.5)))
        self._turned_at = now if turned_at is None or steps == WHEEL_SLOTS else turned_at + steps * tick_s
        for _ in range(steps):
            self._turn(now)

    def _turn(self, now: float) -> None:
        self._cursor = (self._cursor + 1) % WHEEL_SLOTS
        due = self._wheel[self._cursor]
        if not due:
            return
        # Each stream is visited once per heartbeat interval: the age check rides along for free.
        beats = 0
        for stream in list(due):
            if stream.expires_at and now >= stream.expires_at:
                stream.end(CloseReason.TOO_OLD)
                continue
            stream.snapshot_logs = None  # one interval after opening, no live copy can still come
            stream.send(HEARTBEAT_FRAME)
            beats += 1
        if beats:
            self.observer.heartbeats_sent(beats)

    # -- registration -------------------------------------------------------------------------

    def listener_count(self, run_id: str) -> int:
        return len(self.runs.get(run_id, ()))

    @property
    def stream_count(self) -> int:
        return sum(len(streams) for streams in self.runs.values())

    def streams(self) -> Iterable[EventStream]:
        for streams in list(self.runs.values()):
            yield from list(streams)

    def run_version(self, run_id: str) -> Optional[int]:
        """The run's current version; None when it has no listener here (nothing relayed is seen)."""
        return self._versions.get(run_id)

    def newest_id(self, run_id: str) -> Optional[str]:
        """The newest event id delivered to the run's listeners here (None: none yet, or no listener)."""
        newest = self._newest.get(run_id)
        return newest[1] if newest is not None else None

    def _note_newest(self, run_id: str, frame: Frame) -> None:
        key = frame.key
        if key is not None and frame.event_id is not None:
            newest = self._newest.get(run_id)
            if newest is None or key > newest[0]:
                self._newest[run_id] = (key, frame.event_id)

    def _new_version(self, run_id: str) -> None:
        self._version_clock += 1
        self._versions[run_id] = self._version_clock

    def reserve(self, run_id: str, jti: Optional[str] = None, client_ip: str = "") -> Optional[EventStream]:
        """Register a pending listener before the run is read (docs/stream.md §3), or None at the cap."""
        streams = self.runs.get(run_id)
        if streams is None:
            streams = self.runs[run_id] = set()
            self._new_version(run_id)
            self.bus.subscribe(run_id)
        elif len(streams) >= self.max_listeners_per_run:
            return None
        stream = EventStream(self, run_id, jti, client_ip)
        streams.add(stream)
        return stream

    def open(self, stream: EventStream, head: bytes, replayed_through: Optional[str] = None,
             snapshot_id: Optional[str] = None, snapshot_logs: AbstractSet[str] = frozenset()) -> None:
        """Go live: write the response head and snapshot, then what arrived meanwhile, in order.

        ``replayed_through``: the id of the last event ``head`` replayed from history; held
        frames up to it were in the replay and are dropped, so none is sent twice.
        ``snapshot_logs``: log lines (and agent events' keys) the snapshot in ``head`` holds; a held
        frame with one of them was stored before the snapshot was read, so the client has it already.
        ``snapshot_id``: the id the snapshot in ``head`` carries; no frame with an id up to it is
        sent after it, held or relayed later (with Redis, history can be ahead of pub/sub): those
        events came before the snapshot (its log lines are in it), and sending them would put
        ids on the wire that go back below the snapshot's (found by the soak, bench/soak.py).
        """
        stream.write(head)
        held = stream.release_held()
        replayed = id_key(replayed_through)
        if replayed is not None:
            held = [frame for frame in held if frame.key is None or frame.key > replayed]
            # Frames relayed later may still be older than the replay's end (history can be
            # ahead of pub/sub on another instance): the stream drops those too.
            stream.last_key, stream.last_event_id = replayed, replayed_through
        stream.from_snapshot = replayed is None
        snapshot_key = id_key(snapshot_id)
        if snapshot_key is not None and (stream.last_key is None or snapshot_key > stream.last_key):
            stream.last_key, stream.last_event_id = snapshot_key, snapshot_id
        if snapshot_logs:
            stream.snapshot_logs = snapshot_logs
        if stream.closed:
            return
        self._wheel[self._cursor].add(stream)
        stream.slot = self._cursor
        if self.max_stream_age_s > 0:
            stream.expires_at = stream.opened_at + self.max_stream_age_s * (1 - MAX_AGE_JITTER * random.random())
        stream.opened = True
        self.observer.stream_opened(stream)
        for frame in held:
            stream.send(frame)

    def finish(self, stream: EventStream, head: bytes) -> None:
        """Serve a finished run: the head, snapshot and ``done`` already in ``head``; then end."""
        stream.release_held()
        stream.opened = True
        self.observer.stream_opened(stream)
        stream.write(head)
        stream.end(CloseReason.DONE)

    def forget(self, stream: EventStream) -> None:
        """Take a stream out of the registry and the wheel; the run's last one unsubscribes."""
        if stream.slot >= 0:
            self._wheel[stream.slot].discard(stream)
            stream.slot = -1
        streams = self.runs.get(stream.run_id)
        if streams is None or stream not in streams:
            return
        streams.discard(stream)
        if not streams:
            del self.runs[stream.run_id]
            self._versions.pop(stream.run_id, None)
            self._newest.pop(stream.run_id, None)
            self.bus.unsubscribe(stream.run_id)

    def stream_closed(self, stream: EventStream) -> None:
        if stream.opened:  # refused or abandoned before going live: never counted as opened
            self.observer.stream_closed(stream)

    # -- events -----------------------------------------------------------------------------

    def emit(self, run_id: str, event_type: str, payload: Optional[Mapping[str, Any]] = None) -> Optional[str]:
        """Deliver an event to this process's listeners, then relay it (the seed's emitRunEvent).

        The history gives the event its id first (kept even with nobody listening: a client
        that dropped a moment ago resumes from it); returns that id. With Redis the id comes
        from Redis a moment later (``publish`` waits for it) and this returns None.
        """
        event = self._encode(run_id, event_type, payload)
        if event is None:
            return None
        if self._redis_assigns_ids():
            self.bus.publish_event(run_id, *event)  # a future nobody needs to wait for
            return None
        return self._emit_here(run_id, *event)

    async def publish(self, run_id: str, event_type: str, payload: Optional[Mapping[str, Any]] = None) -> Optional[str]:
        """``emit`` for publishers that can wait (sentri.event_intake); returns the event's id."""
        event = self._encode(run_id, event_type, payload)
        if event is None:
            return None
        if self._redis_assigns_ids():
            return await self.bus.publish_event(run_id, *event)
        return self._emit_here(run_id, *event)

    async def publish_many(self, run_id: str,
                           events: Sequence[Tuple[str, Optional[Mapping[str, Any]]]]) -> List[Optional[str]]:
        """``publish`` for events of one run published together (a batch), in order.

        Without Redis, each listener gets them in one write (``EventStream.send_many``). With
        Redis, each goes to the outbox in order and they are awaited together (one round trip).
        """
        if self._redis_assigns_ids():
            return list(await asyncio.gather(*(self.publish(run_id, event_type, payload)
                                               for event_type, payload in events)))
        ids: List[Optional[str]] = []
        frames: List[Frame] = []
        relayed: List[bytes] = []
        for event_type, payload in events:
            event = self._encode(run_id, event_type, payload)
            if event is None:
                ids.append(None)
                continue
            data, ends_stream = event
            event_id = self.history.append_now(run_id, data, ends_stream)
            frames.append(Frame(sse.data_frame(data, event_id), ends_stream=ends_stream, event_id=event_id))
            relayed.append(data)
            ids.append(event_id)
        self.deliver_many(run_id, frames)
        for data in relayed:
            self.bus.publish(run_id, data)
        return ids

    def _redis_assigns_ids(self) -> bool:
        return self.bus.assigns_ids and not self.history.assigns_here

    def _encode(self, run_id: str, event_type: str,
                payload: Optional[Mapping[str, Any]]) -> Optional[Tuple[bytes, bool]]:
        if run_id not in self.runs and not self.bus.relays and not self.history.assigns_here:
            return None  # nobody here, nobody to relay to, nothing to keep: an event nobody sees costs nothing
        event: Dict[str, Any] = {"type": event_type}
        if payload:
            event.update(payload)
            event.pop("_origin", None)
        self.observer.event_emitted(run_id)
        return sse.to_utf8(sse.dumps_js(event)), event_type == DONE

    def _emit_here(self, run_id: str, data: bytes, ends_stream: bool) -> Optional[str]:
        event_id = self.history.append_now(run_id, data, ends_stream)
        self.deliver(run_id, Frame(sse.data_frame(data, event_id), ends_stream=ends_stream, event_id=event_id))
        self.bus.publish(run_id, data)
        return event_id

    def deliver(self, run_id: str, frame: Frame) -> int:
        """Write one encoded event to every local listener of the run; ``done`` ends them."""
        streams = self.runs.get(run_id)
        if not streams:
            return 0
        self._new_version(run_id)
        self._note_newest(run_id, frame)
        listeners = list(streams)
        for stream in listeners:
            stream.send(frame)
        self.observer.event_delivered(run_id, len(listeners), len(frame.raw))
        return len(listeners)

    def deliver_to_joined_after(self, run_id: str, frame: Frame, since: float, stored: bool = False) -> int:
        """``deliver`` to the run's streams registered after ``since`` (``time.monotonic()``) only:
        an event the others already had without an id, from a Redis outage (sentri.bus.redis).
        ``stored``: the event was stored before ``since``, so streams live on a snapshot (read
        after it) hold it already; pending ones and replayed ones do not."""
        streams = [stream for stream in self.runs.get(run_id, ())
                   if stream.opened_at > since and not (stored and stream.opened and stream.from_snapshot)]
        if not streams:
            return 0
        self._new_version(run_id)
        self._note_newest(run_id, frame)
        for stream in streams:
            stream.send(frame)
        self.observer.event_delivered(run_id, len(streams), len(frame.raw))
        return len(streams)

    def deliver_many(self, run_id: str, frames: Sequence[Frame]) -> int:
        """``deliver`` for frames that arrived together: each listener gets them in one write."""
        streams = self.runs.get(run_id)
        if not streams or not frames:
            return 0
        self._new_version(run_id)  # as deliver: a snapshot read before these must not be reused
        for frame in frames:
            self._note_newest(run_id, frame)
        listeners = list(streams)
        for stream in listeners:
            stream.send_many(frames)
        for frame in frames:
            self.observer.event_delivered(run_id, len(listeners), len(frame.raw))
        return len(listeners)

    def close_where(self, predicate: Callable[[EventStream], bool], reason: str) -> int:
        """End every stream matching ``predicate`` (revoked tokens, drain); returns how many."""
        matched = [stream for stream in self.streams() if predicate(stream)]
        for stream in matched:
            stream.end(reason)
        return len(matched)
