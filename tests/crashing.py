"""A test that crashes the process it runs in, for ``tests/test_crash_log.py`` only.

Its name is not ``test_*.py``, so the suite never collects it; that test runs it in a pytest
process of its own by naming it.
"""

from __future__ import annotations

import ctypes


def test_that_reads_address_zero() -> None:
    ctypes.string_at(0)  # SIGSEGV
