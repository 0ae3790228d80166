"""Cleanups that a cancel cannot cut short.

``RedisBus.close`` cancels the relay's supervisor again every 50 ms until it ends (redis-py can
swallow a cancel mid-command). A cleanup awaited in a ``finally`` then meets the second cancel
half-way: a client's ``aclose()`` stopped there leaves its socket open, and the garbage
collector later warns "unclosed Connection" (CI's flaky relay tests, issue 14).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def finish(cleanup: Awaitable[T]) -> T:
    """Await ``cleanup`` to its end through any number of cancels; a cancel that came meanwhile
    is raised after it (bound the cleanup itself: this waits as long as it takes)."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        task.exception()  # retrieved: the cancel below says what the caller needs to know
        raise asyncio.CancelledError
    return task.result()
