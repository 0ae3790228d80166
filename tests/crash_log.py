"""Where a crash of the test process leaves its stacks.

A test env that dies of a signal (CI once saw ``py39-oldest-pg: FAIL code -11``) writes no JUnit
report, and its stderr is lost among the parallel envs' output. With ``SENTRI_TEST_CRASH_LOG``
set (tox.ini sets it per env), ``faulthandler`` writes every thread's stack into that file
instead, and ``.ci/run`` prints the files that are not empty after the matrix.
"""

from __future__ import annotations

import faulthandler
import os
from typing import Any

__all__ = ["write_crash_stacks_to_the_crash_log"]


def write_crash_stacks_to_the_crash_log(config: Any) -> None:
    """Called after pytest's own faulthandler plugin has pointed faulthandler at stderr."""
    path = os.environ.get("SENTRI_TEST_CRASH_LOG")
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    crash_log = open(path, "w")  # noqa: SIM115  (open until the end: faulthandler writes to its fd)
    config.add_cleanup(crash_log.close)
    faulthandler.enable(file=crash_log, all_threads=True)
