"""How events travel between processes. The hub talks to one ``Bus`` and never asks which.

``LocalBus`` is the single-instance default (no Redis): nothing to relay. ``RedisBus``
(``sentri.bus.redis``) relays through Redis pub/sub, compatible with the Node backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, AbstractSet, Awaitable, Callable, Mapping, Optional, Protocol, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ..stream import EventStream, Frame


class Deliveries(Protocol):
    """Where a bus hands what it receives: the hub, as far as a bus needs to know it."""

    @property
    def runs(self) -> Mapping[str, AbstractSet[EventStream]]:
        """Run id -> the streams open for it in this process."""

    def deliver(self, run_id: str, frame: Frame) -> int:
        """Write one encoded event to the run's local streams; returns how many."""

    def deliver_many(self, run_id: str, frames: Sequence[Frame]) -> int:
        """``deliver`` for frames that arrived together: each stream gets them in one write."""

    def close_where(self, predicate: Callable[[EventStream], bool], reason: str) -> int:
        """End every local stream matching ``predicate``; returns how many."""

    def deliver_to_joined_after(self, run_id: str, frame: Frame, since: float, stored: bool = False) -> int:
        """``deliver`` to the run's streams registered after ``since`` (``time.monotonic()``) only."""

    def newest_id(self, run_id: str) -> Optional[str]:
        """The newest event id delivered to the run's local streams (None: none, or no stream)."""


class Bus:
    """The interface; also the in-process implementation, where every method has nothing to do."""

    #: Whether ``publish`` sends anywhere: when False, events for runs without local
    #: listeners are dropped before they are even encoded.
    relays = False

    def attach(self, hub: Deliveries) -> None:
        """Called once by the hub that receives this bus's messages."""

    def subscribe(self, run_id: str) -> None:
        """The process now has a local listener for this run."""

    def unsubscribe(self, run_id: str) -> None:
        """The process's last local listener for this run left."""

    def publish(self, run_id: str, event_json: bytes) -> None:
        """Send an event (already delivered locally) to the other processes."""

    #: Whether this bus gives events their ids where it publishes them (Redis: the run's
    #: stream entry id, the same on every instance). Then the hub hands events to
    #: ``publish_event`` and the bus delivers them locally too, once the id is known.
    assigns_ids = False

    def publish_event(self, run_id: str, event_json: bytes, ends_stream: bool) -> Awaitable[Optional[str]]:
        """Give an event its id, deliver it locally and relay it; resolves to the id (None if
        it could not be given one now, for example with the broker away)."""
        raise NotImplementedError("this bus does not assign ids")

    async def wait_subscribed(self, run_id: str, timeout_s: float) -> bool:
        """Wait until messages for this run will reach this process (docs/stream.md §3).

        ``subscribe`` only asks; a ``done`` published before the broker acts on it would be
        lost, so a new listener waits for this (briefly) before the run is read.
        True when subscribed; False when the broker is down or slow (the caller proceeds).
        """
        return True

    def repair_unread_history(self, run_id: str, registered_at: float, client_through: Optional[str]) -> None:
        """A stream of the run went on without its history read (the history could not answer):
        what was published after it registered (``time.monotonic()``), or after the id its
        client resumed from, and before this process was subscribed is in neither its snapshot
        nor its live events. In process, nothing is."""

    @property
    def connected(self) -> bool:
        return True

    async def start(self) -> None:
        """Begin relaying; must not fail when the broker is unreachable."""

    async def close(self) -> None:
        """Stop relaying and release connections."""


LocalBus = Bus
