"""Group commit: the durable writes waiting on this instance go to the database together.

Every publisher's writes (``sentri.writes.Write``: log lines, agent events, a run's end) are
queued; one database turn at a time takes everything queued (up to ``max_writes``) and
stores it in ONE transaction (``sentri.writes.commit_writes``), then wakes each waiting
publisher in the order it queued, so events are delivered in the order their ``seq`` says.
While a turn runs, the next one fills; and before it takes the queue a turn lets the IOLoop
go round ``GATHER_LOOP_TURNS`` times, so the requests being read meanwhile (the producers just
answered by the last turn send their next line at once) ride in it too. No timer: when idle
those loop turns take microseconds, and a lone line is committed at once.

A publisher's writes (one event, or a whole batch request) are one group: never split over
two transactions. A group may ask that its run exist (the publish API's 404): the turn reads
which of its groups' runs are live first, in the same database turn, and a group whose run
is not gets ``RunNotFoundError`` with nothing of it written. If a turn of several groups
fails, each group is retried alone, so one write the database refuses (a NUL byte on
PostgreSQL) fails only its own publisher.
"""

from __future__ import annotations

import asyncio
from typing import List, NamedTuple, Optional, Sequence, Set, Tuple

from .store import Store
from .writes import Write, commit_writes, live_runs

# Writes per transaction: bounds how long one turn holds the database's write lock.
DEFAULT_MAX_WRITES = 2000
# IOLoop turns a database turn waits for more groups before it takes the queue. Each database
# turn costs the IOLoop a hand-off to a database thread and back, and the GIL while that thread
# runs; with fewer, fuller turns the real publish API answered 0.70 x the Node seed's
# publishes/s at 0, 0.72 x at 1, 0.74 x at 2, 0.80 x at 3, 0.86 x at 5 and 0.83 x at 8 (means
# of 2-4 repeats), with p99 unchanged (README, "The publish path: fewer, fuller database
# turns"). At 5 the lines of the harness's 16 publishers all ride in one turn (16.0 writes
# per transaction).
GATHER_LOOP_TURNS = 5



class RunNotFoundError(LookupError):
    """The run a group asked for does not exist (or is soft-deleted); nothing of it was written."""


class ShuttingDownError(RuntimeError):
    """The instance is stopping: no turn took this group, and none will; nothing of it was written."""


class _Group(NamedTuple):
    writes: List[Write]
    future: asyncio.Future[List[Optional[int]]]
    required_run: Optional[str]


class GroupCommitter:
    def __init__(self, store: Store, max_writes: int = DEFAULT_MAX_WRITES) -> None:
        self.store = store
        self.max_writes = max_writes
        self._queue: List[_Group] = []
        self._turns: Optional[asyncio.Future[None]] = None
        self._closing = False
        # Transactions committed and writes they carried (tests and metrics read them).
        self.transactions = 0
        self.writes = 0

    async def commit(self, writes: Sequence[Write], required_run: Optional[str] = None) -> List[Optional[int]]:
        """Store ``writes`` (committed when this returns); each log line's ``seq``, else None.

        ``required_run``: raise ``RunNotFoundError`` (nothing written) unless that run is live.
        """
        if not writes and required_run is None:
            return []
        if self._closing:
            raise ShuttingDownError()
        future: asyncio.Future[List[Optional[int]]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Group(list(writes), future, required_run))
        if self._turns is None:
            self._turns = asyncio.ensure_future(self._run_turns())
        return await future

    async def close(self, timeout_s: float) -> int:
        """Take no more groups; give the queued ones ``timeout_s`` to be committed, then refuse the rest.

        A turn already running is never cut (its transaction commits or fails as a whole); the
        groups still queued when the time is up get ``ShuttingDownError``: nothing of them is
        written, so their publishers may say so. Returns how many were refused.
        """
        self._closing = True
        if self._turns is not None:
            await asyncio.wait([self._turns], timeout=timeout_s)
        refused, self._queue = self._queue, []
        for group in refused:
            if not group.future.done():
                group.future.set_exception(ShuttingDownError())
        return len(refused)

    async def _run_turns(self) -> None:
        try:
            while self._queue:
                for _ in range(GATHER_LOOP_TURNS):
                    await asyncio.sleep(0)  # one IOLoop turn: its reads and callbacks run
                groups = self._take()
                if len(groups) > 1:
                    try:
                        await self._commit(groups)
                    except Exception:  # one group's write may be the bad one: each alone
                        for group in groups:
                            await self._commit_alone(group)
                else:
                    await self._commit_alone(groups[0])
        finally:
            self._turns = None

    def _take(self) -> List[_Group]:
        taken, count = 0, 0
        for group in self._queue:
            if taken and count + len(group.writes) > self.max_writes:
                break
            taken += 1
            count += len(group.writes)
        groups, self._queue = self._queue[:taken], self._queue[taken:]
        return groups

    async def _commit_alone(self, group: _Group) -> None:
        try:
            await self._commit([group])
        except Exception as error:
            if not group.future.done():
                group.future.set_exception(error)

    async def _commit(self, groups: List[_Group]) -> None:
        required = sorted({group.required_run for group in groups if group.required_run is not None})
        agent_events_table = self.store.has_agent_events

        def turn() -> Tuple[Set[str], List[Optional[int]]]:
            live = live_runs(required) if required else set()
            writes = [write for group in groups if group.required_run is None or group.required_run in live
                      for write in group.writes]
            return live, (commit_writes(writes, agent_events_table) if writes else [])

        live, seqs = await self.store.write(turn)
        self.transactions += 1
        start = 0
        for group in groups:
            if group.required_run is not None and group.required_run not in live:
                if not group.future.done():
                    group.future.set_exception(RunNotFoundError(group.required_run))
                continue
            end = start + len(group.writes)
            self.writes += len(group.writes)
            if not group.future.done():  # its publisher gave up waiting (cancelled): committed all the same
                group.future.set_result(seqs[start:end])
            start = end
