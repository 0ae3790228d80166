"""Graceful drain on SIGTERM/SIGINT: tell every client to come back, then end streams spread out.

A restart that cut every stream at once would bring every browser back in the same second
(docs/stream.md §11). Instead the listening socket is closed first (nginx sends new streams to the
other instances; ``/readyz`` says 503), each open stream gets a ``retry:`` hint with jitter,
and the streams are ended one by one over ``SENTRI_DRAIN_WINDOW_S`` with
``CloseReason.DRAINED``, through ``EventStream.end`` so each chunked response ends cleanly
and the client reconnects (with ``Last-Event-ID``) instead of seeing an error. Whatever is
still open at the end of the window is closed, so the process always exits in time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import List, Optional

from . import sse
from .context import Context
from .stream import CloseReason, EventStream, Frame

log = logging.getLogger("sentri.drain")

# Streams are ended within the first 80% of the window; the rest is for last bytes to leave.
SPREAD_FRACTION = 0.8
# Reconnection delay hinted to each client: random in [min, max), so the clients of one
# instance, already ended at different times, also wait different times before coming back.
RETRY_HINT_MIN_MS = 500
RETRY_HINT_MAX_MS = 3000


def drain_schedule(count: int, window_s: float, rng: random.Random) -> List[float]:
    """When (seconds after the drain starts) each of ``count`` streams is ended, ascending.

    The spread part of the window is cut into ``count`` equal slots and each stream ends at a
    random point of its own slot: the rate stays even (no two slots bunch up) yet no two
    instances drain in lockstep. Every offset is in ``[0, window_s * SPREAD_FRACTION)``.
    """
    if count <= 0:
        return []
    spread = max(window_s, 0.0) * SPREAD_FRACTION
    slot = spread / count
    return [(index + rng.random()) * slot for index in range(count)]


def retry_hint_ms(rng: random.Random) -> int:
    return RETRY_HINT_MIN_MS + int(rng.random() * (RETRY_HINT_MAX_MS - RETRY_HINT_MIN_MS))


@dataclass
class DrainReport:
    streams: int
    window_s: float
    seconds: float
    forced: int

    def as_fields(self) -> dict:  # type: ignore[type-arg]
        return {"streams": self.streams, "windowS": self.window_s, "seconds": round(self.seconds, 3),
                "forced": self.forced}


async def drain(context: Context, window_s: float, rng: Optional[random.Random] = None) -> DrainReport:
    """Mark the instance draining and end every open stream within ``window_s``."""
    rng = rng or random.Random()
    started = time.monotonic()
    context.draining = True
    streams: List[EventStream] = list(context.hub.streams())
    rng.shuffle(streams)  # no run or client is always drained first
    log.info("draining", extra={"fields": {"streams": len(streams), "windowS": window_s}})
    for stream in streams:
        stream.send(Frame(sse.retry_frame(retry_hint_ms(rng))))
    for stream, offset in zip(streams, drain_schedule(len(streams), window_s, rng)):
        delay = started + offset - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        stream.end(CloseReason.DRAINED)
    # Streams that went live during the drain (their lookup was in flight) end now too.
    for stream in list(context.hub.streams()):
        if stream not in streams:
            streams.append(stream)
            stream.end(CloseReason.DRAINED)
    # Give slow readers what is left of the window to take their last bytes, then cut.
    deadline = started + window_s
    while any(not stream.closed for stream in streams) and time.monotonic() < deadline:
        await asyncio.sleep(min(0.05, max(deadline - time.monotonic(), 0.0)))
    forced = 0
    for stream in streams:
        if not stream.closed:
            forced += 1
            stream.close(CloseReason.DRAINED)
    report = DrainReport(len(streams), window_s, time.monotonic() - started, forced)
    log.info("drained", extra={"fields": report.as_fields()})
    return report
