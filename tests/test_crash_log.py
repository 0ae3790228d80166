"""A test process that crashes leaves every thread's stack in its env's crash log
(``tests/crash_log.py``), which ``.ci/run`` prints after the matrix."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

CRASHING_TEST = Path(__file__).with_name("crashing.py")


def test_a_test_that_crashes_the_process_leaves_its_stack_in_the_crash_log(tmp_path: Path) -> None:
    crash_log = tmp_path / "crash" / "env.log"
    env = dict(os.environ, SENTRI_TEST_CRASH_LOG=str(crash_log))
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(CRASHING_TEST)],
                            cwd=CRASHING_TEST.parent.parent, env=env, capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGSEGV
    stacks = crash_log.read_text()
    assert stacks.startswith("Fatal Python error: Segmentation fault")
    assert re.search(r'tests/crashing\.py", line \d+ in test_that_reads_address_zero\n', stacks)
    # pytest's own faulthandler plugin points at stderr; the crash log took its place.
    assert b"Fatal Python error" not in result.stderr
