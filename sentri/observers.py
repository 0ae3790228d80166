"""Several ``HubObserver``s behind one: the hub calls one object, metrics and logs each get the call."""

from __future__ import annotations

from typing import Sequence

from .hub import HubObserver
from .stream import EventStream


class ObserverFanOut(HubObserver):
    def __init__(self, observers: Sequence[HubObserver]) -> None:
        self.observers = tuple(observers)

    def stream_opened(self, stream: EventStream) -> None:
        for observer in self.observers:
            observer.stream_opened(stream)

    def stream_closed(self, stream: EventStream) -> None:
        for observer in self.observers:
            observer.stream_closed(stream)

    def event_delivered(self, run_id: str, listeners: int, nbytes: int) -> None:
        for observer in self.observers:
            observer.event_delivered(run_id, listeners, nbytes)

    def heartbeats_sent(self, count: int) -> None:
        for observer in self.observers:
            observer.heartbeats_sent(count)

    def event_emitted(self, run_id: str) -> None:
        for observer in self.observers:
            observer.event_emitted(run_id)

    def resume_outcome(self, kind: str) -> None:
        for observer in self.observers:
            observer.resume_outcome(kind)
