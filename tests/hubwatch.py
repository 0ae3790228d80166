"""Await what the hub reports (streams opened and closed) instead of sleeping in tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, List


class HubWatch:
    """Wraps the hub's observer: records opened and closed streams, forwards everything."""

    def __init__(self, hub: Any) -> None:
        self.inner = hub.observer
        self.opened: List[Any] = []
        self.closed: List[Any] = []
        self.heartbeat_times: List[float] = []  # when the hub sent each heartbeat, by its own clock
        self._changed = asyncio.Event()
        hub.observer = self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream_opened(self, stream: Any) -> None:
        self.inner.stream_opened(stream)
        self.opened.append(stream)
        self._changed.set()

    def stream_closed(self, stream: Any) -> None:
        self.inner.stream_closed(stream)
        self.closed.append(stream)
        self._changed.set()

    def heartbeats_sent(self, count: int) -> None:
        self.inner.heartbeats_sent(count)
        self.heartbeat_times.extend([time.monotonic()] * count)

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    async def opened_count(self, count: int, timeout: float = 5.0) -> None:
        await self.until(lambda: len(self.opened) >= count, timeout)

    async def closed_count(self, count: int, timeout: float = 5.0) -> None:
        await self.until(lambda: len(self.closed) >= count, timeout)


def fd_is_watched(fd: int) -> bool:
    """Whether the running loop still has a reader or writer for ``fd`` (removing them to look)."""
    loop = asyncio.get_running_loop()
    return loop.remove_reader(fd) | loop.remove_writer(fd)
