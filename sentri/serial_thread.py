"""One thread that runs the work given to it, in order, and hands each result back to the IOLoop.

The group commit runs one database turn at a time, so it needs no pool of threads; and on a
thread of its own its turns never queue behind the stream lookups that share the store's
pool (a reconnect storm fills that pool with snapshot reads while publishes wait on their
commit). A hand-off is one ``SimpleQueue.put`` and one ``call_soon_threadsafe``: 43 against 55 us
of CPU per round trip through ``loop.run_in_executor`` (uvloop, this 2-core VM), which at a
few hundred turns a second changed no throughput figure (bench/results/publish-turns).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from typing import Any, Callable, Optional, Tuple, TypeVar

T = TypeVar("T")

_Job = Tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class SerialThread:
    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Optional[_Job]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def run(self, work: Callable[[], T]) -> T:
        """``work()`` on this thread, after the work given before it; its result or its exception.

        Cancelling the caller does not stop ``work`` once it has started: it runs to its end and
        its result is dropped (a database turn commits or fails as a whole).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((work, loop, future))
        return await future

    def close(self) -> None:
        """Finish the work already given, then end the thread."""
        self._jobs.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            work, loop, future = job
            try:
                result, error = work(), None
            except BaseException as failure:  # handed to the caller, as an executor would
                result, error = None, failure
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: Optional[BaseException]) -> None:
    if future.done():  # its caller was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
