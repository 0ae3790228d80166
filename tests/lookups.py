"""A run lookup held on its database thread, so a test can act while a stream request waits in it,
or racing a producer."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Callable, Iterator

from .sseclient import open_request


class HeldLookup:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.released = threading.Event()

    async def wait_started(self, timeout_s: float = 5.0) -> None:
        """Until a request's lookup has begun (and holds a database thread)."""
        await asyncio.wait_for(self.started.wait(), timeout_s)

    async def request(self, port: int, path: str) -> asyncio.Future[Any]:
        """A stream request, once it waits in this lookup (await the future for its response)."""
        request = asyncio.ensure_future(open_request(port, path))
        await self.wait_started()
        return request

    def release(self) -> None:
        """Let the held lookup (and any later one) read the database."""
        self.released.set()


@contextlib.contextmanager
def held_lookup(context: Any) -> Iterator[HeldLookup]:
    """``context.store.open_stream_sync`` waits (up to 10 s) for ``release()`` before it reads the
    row as it is then; released on the way out in any case."""
    held = HeldLookup()
    loop = asyncio.get_running_loop()
    original = context.store.open_stream_sync

    def slow_lookup(*args: Any, **kwargs: Any) -> Any:
        loop.call_soon_threadsafe(held.started.set)
        held.released.wait(10)
        return original(*args, **kwargs)

    context.store.open_stream_sync = slow_lookup
    try:
        yield held
    finally:
        held.release()


async def open_racing_a_producer(context: Any, port: int, path: str, store: Callable[[], Any],
                                 emit: Callable[[], Any]) -> Any:
    """A stream request whose lookup races a producer: after the stream's history position was
    read and before its snapshot is, ``store()`` runs on the database thread and ``emit()`` on
    the loop, so what they add is both in the snapshot and on its way live."""
    loop = asyncio.get_running_loop()
    original = context.store.open_stream_sync
    emitted = threading.Event()

    def lookup_racing_a_producer(*args: Any, **kwargs: Any) -> Any:
        store()
        loop.call_soon_threadsafe(lambda: (emit(), emitted.set()))
        emitted.wait(5)
        return original(*args, **kwargs)

    context.store.open_stream_sync = lookup_racing_a_producer
    try:
        return await open_request(port, path)
    finally:
        context.store.open_stream_sync = original
