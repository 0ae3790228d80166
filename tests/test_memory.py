"""Freed heap memory goes back to the system (``sentri.memory``): glibc's ``malloc_trim`` on a
worker thread, on a timer, so RSS comes down after a reconnect storm's peak."""

from __future__ import annotations

import asyncio
import platform
import threading

import pytest

from sentri.memory import MemoryTrimmer, glibc_malloc_trim, resident_bytes

ON_GLIBC = platform.libc_ver()[0] == "glibc"


def fragmented_heap_freed() -> list:
    """About 125 MB of glibc-allocated buffers (over pymalloc's 512 bytes), freed but for every
    50th: the survivors are spread over the heap, so glibc cannot hand its top back by itself."""
    survivors, freed = [], []
    for number in range(100_000):
        (survivors if number % 50 == 0 else freed).append(bytearray(1000 + number % 500))
    freed.clear()
    return survivors


@pytest.mark.skipif(not ON_GLIBC, reason="malloc_trim is glibc's")
@pytest.mark.gen_test(timeout=30)
async def test_a_trim_gives_the_freed_pages_of_a_fragmented_heap_back_to_the_system():
    survivors = fragmented_heap_freed()
    before = resident_bytes()
    returned = await MemoryTrimmer(30.0, glibc_malloc_trim()).trim_now()
    after = resident_bytes()

    assert returned >= 50 << 20
    assert before - after >= 50 << 20
    assert len(survivors) == 2000  # kept alive until here


@pytest.mark.gen_test(timeout=10)
async def test_the_timer_trims_on_a_worker_thread_every_interval_until_stopped():
    calls = []

    def trim(pad: int) -> int:
        calls.append((pad, threading.current_thread() is threading.main_thread()))
        return 1

    trimmer = MemoryTrimmer(0.05, trim=trim)
    trimmer.start()
    await asyncio.sleep(0.4)
    trimmer.stop()
    await asyncio.sleep(0.1)  # a trim under way finishes
    made = len(calls)
    await asyncio.sleep(0.2)

    assert made >= 3
    assert len(calls) == made == trimmer.trims
    assert set(calls) == {(0, False)}  # malloc_trim(0), never on the loop's thread


def test_an_interval_of_zero_or_a_c_library_without_malloc_trim_starts_no_timer():
    for trimmer in (MemoryTrimmer(0.0, trim=lambda pad: 1), MemoryTrimmer(30.0, trim=None)):
        trimmer.start()
        assert not trimmer.enabled
        assert not trimmer._job.started


@pytest.mark.skipif(not ON_GLIBC, reason="malloc_trim is glibc's")
def test_glibc_s_malloc_trim_is_found():
    assert glibc_malloc_trim() is not None
