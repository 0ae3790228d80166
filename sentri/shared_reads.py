"""Identical lookups that wait at the same time share one database call.

A reconnect storm brings thousands of connects for the same few runs within a second; each
would otherwise queue its own copy of the same queries behind the database threads. Here a
lookup joins an identical one that is still *waiting for a thread*, and all of them get its
result. A lookup never joins one whose queries have already started: the joiner reserved its
stream (holding live events) before asking, so it needs a read that begins after that moment,
or an event published in between could be missing from both its snapshot and its held frames.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable, Dict, Hashable, TypeVar, cast

T = TypeVar("T")


class _PendingRead:
    __slots__ = ("started", "task", "sharers")

    def __init__(self) -> None:
        self.started = False
        self.task: asyncio.Future[Any]
        self.sharers = 1


class SharedReads:
    def __init__(self) -> None:
        self._waiting: Dict[Hashable, _PendingRead] = {}
        # Taken by the loop thread (join or add) and by the database thread (start): a read
        # is either still joinable or started, never both.
        self._lock = threading.Lock()
        self.reads = 0
        self.shared = 0

    async def run(self, key: Hashable, submit: Callable[[Callable[[], T]], Awaitable[T]],
                  work: Callable[[], T]) -> T:
        """``work`` run through ``submit`` (a database thread), or the result of an identical waiting call."""
        with self._lock:
            pending = self._waiting.get(key)
            if pending is not None and not pending.started:
                pending.sharers += 1
                self.shared += 1
                task = pending.task
            else:
                pending = _PendingRead()
                self._waiting[key] = pending
                self.reads += 1

                def starting() -> T:
                    with self._lock:
                        pending.started = True
                        # Still the key's entry: a call finding it unstarted shares it, never replaces it.
                        del self._waiting[key]
                    return work()

                task = pending.task = asyncio.ensure_future(submit(starting))
        # Shielded: one caller giving up must not cancel the read the others wait for.
        return cast(T, await asyncio.shield(task))
