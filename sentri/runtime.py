"""Process-wide tuning applied once, after start-up and before serving.

Python's cyclic garbage collector walks every tracked object of the older generations on a
full collection. At 19,000 open streams that is hundreds of thousands of objects (streams,
sets, handles), and the walk stops the event loop: heartbeats and events wait. Two measures:

* ``gc.freeze()`` once the server is built moves everything alive at start-up (modules,
  classes, settings, the app) to a permanent generation that collections never walk.
* A larger young-generation threshold (``SENTRI_GC_THRESHOLD`` allocations instead of 700)
  means fewer collections during connect bursts; streams are long-lived, so they reach the
  old generation either way, and few of them form cycles.
"""

from __future__ import annotations

import gc

# The middle and oldest thresholds: an old-generation pass only every 50 x 100 young passes.
OLDER_THRESHOLDS = (50, 100)


def tune_gc(young_threshold: int) -> None:
    """Freeze what start-up built and collect the young generation every ``young_threshold`` allocations."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, *OLDER_THRESHOLDS)
