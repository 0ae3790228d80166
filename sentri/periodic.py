"""A job the IOLoop starts every so often, never while its last run is still going."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional

from tornado.ioloop import PeriodicCallback


class PeriodicJob:
    """Runs ``job()`` every ``interval_s`` once started; a run still going when the next is due
    (a slow disk, a busy database thread) makes that one skip instead of stacking up."""

    def __init__(self, job: Callable[[], Awaitable[Any]], interval_s: float) -> None:
        self.job = job
        self.interval_s = interval_s
        self._timer: Optional[PeriodicCallback] = None
        self._running: Optional[asyncio.Future[Any]] = None

    @property
    def started(self) -> bool:
        return self._timer is not None

    def start(self) -> None:
        if self._timer is None:
            self._timer = PeriodicCallback(self._tick, self.interval_s * 1000)
            self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _tick(self) -> None:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self.job())
