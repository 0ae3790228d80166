"""Process-wide tuning applied once, after start-up and before serving.

Python's cyclic garbage collector walks every tracked object of the older generations on a
full collection. At 19,000 open streams that is hundreds of thousands of objects (streams,
sets, handles), and the walk stops the event loop: heartbeats and events wait. Two measures:

* ``gc.freeze()`` once the server is built moves everything alive at start-up (modules,
  classes, settings, the app) to a permanent generation that collections never walk.
* The young-generation threshold is a setting (``SENTRI_GC_THRESHOLD``), 5,000 by default.
  While each connect left reference cycles (Tornado's handler, request and connection), a
  larger threshold let them pile up (20,000: 8.8 instead of 5.2 KB RSS per stream), so it
  stayed Python's 700. A stream's connect now leaves none (handlers/events_connect.py):
  measured with bench/connect_cost.py, 15,000 streams, 5,000 against 700 cut the collector's
  pauses from 0.50 s to 0.12 s in all and the longest from 58 to 18 ms, RSS per stream the
  same (0.91 KB). Full collections walk every open stream; fewer young ones mean fewer of them.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")

# The middle and oldest thresholds as Python's defaults: a full pass every 100 young passes, so
# the cycles Tornado leaves per request (handler, request, connection) do not pile up in RSS.
OLDER_THRESHOLDS = (10, 10)


def tune_gc(young_threshold: int) -> None:
    """Freeze what start-up built and collect the young generation every ``young_threshold`` allocations."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, *OLDER_THRESHOLDS)


def run(main: Coroutine[Any, Any, T], use_uvloop: bool = True) -> T:
    """``asyncio.run(main)`` on uvloop when it is installed (the optional extra ``uvloop``).

    Measured with bench/scenarios.py (README "Reconnect storms"): the accept, epoll and
    socket calls of a connect cost less on libuv's loop than on asyncio's selector loop.
    """
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            if sys.version_info >= (3, 11):
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    return runner.run(main)
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # pragma: no cover (Python < 3.11)
            try:  # pragma: no cover
                return asyncio.run(main)
            finally:  # pragma: no cover
                asyncio.set_event_loop_policy(None)
    return asyncio.run(main)
