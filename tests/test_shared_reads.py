"""Identical lookups waiting at the same time share one read; a started read is never joined."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, List, TypeVar

import pytest

from sentri.shared_reads import SharedReads

T = TypeVar("T")


class OneThread:
    """A real one-thread pool whose first job can be held, so later jobs queue behind it."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.gate = threading.Event()
        self.calls: List[str] = []

    async def submit(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    def blocker(self) -> str:
        self.gate.wait(5)
        return "blocker"

    def reader(self, name: str) -> Callable[[], str]:
        def read() -> str:
            self.calls.append(name)
            return f"{name}-{len(self.calls)}"
        return read


@pytest.mark.gen_test
async def test_lookups_waiting_for_a_thread_share_the_first_ones_read() -> None:
    pool, reads = OneThread(), SharedReads()
    busy = asyncio.ensure_future(pool.submit(pool.blocker))
    waiting = [asyncio.ensure_future(reads.run("run-1", pool.submit, pool.reader(f"r{n}"))) for n in range(5)]
    other = asyncio.ensure_future(reads.run("run-2", pool.submit, pool.reader("other")))
    await asyncio.sleep(0)
    pool.gate.set()
    results: List[Any] = await asyncio.gather(busy, other, *waiting)
    # The pool is FIFO: run-1's read was queued first, so it is call 1 and run-2's is call 2.
    assert results == ["blocker", "other-2", "r0-1", "r0-1", "r0-1", "r0-1", "r0-1"]
    assert pool.calls == ["r0", "other"]
    assert (reads.reads, reads.shared) == (2, 4)
    pool.executor.shutdown()


@pytest.mark.gen_test
async def test_a_lookup_arriving_after_the_read_started_gets_a_read_of_its_own() -> None:
    pool, reads = OneThread(), SharedReads()
    started, release = threading.Event(), threading.Event()

    def slow_read() -> str:
        started.set()
        release.wait(5)
        return "first"

    first = asyncio.ensure_future(reads.run("run-1", pool.submit, slow_read))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    second = asyncio.ensure_future(reads.run("run-1", pool.submit, lambda: "second"))
    release.set()
    assert await asyncio.gather(first, second) == ["first", "second"]
    assert (reads.reads, reads.shared) == (2, 0)
    pool.executor.shutdown()


@pytest.mark.gen_test
async def test_a_failed_read_fails_every_lookup_that_shared_it() -> None:
    pool, reads = OneThread(), SharedReads()
    busy = asyncio.ensure_future(pool.submit(pool.blocker))

    def broken() -> str:
        raise RuntimeError("database down")

    waiting = [asyncio.ensure_future(reads.run("run-1", pool.submit, broken)) for _ in range(3)]
    await asyncio.sleep(0)
    pool.gate.set()
    await busy
    for lookup in waiting:
        with pytest.raises(RuntimeError, match="database down"):
            await lookup
    assert (reads.reads, reads.shared) == (1, 2)
    pool.executor.shutdown()
