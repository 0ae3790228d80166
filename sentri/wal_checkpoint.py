"""SQLite's WAL checkpoints, run beside the commits instead of inside one of them.

In WAL mode SQLite copies the log back into the database file (a checkpoint) once the log
passes ``wal_autocheckpoint`` pages (1,000), and it does so in the connection whose commit
crossed the mark, before that commit returns; with ``synchronous=NORMAL`` the checkpoint is
also the only write that waits for the disk (fsync). On the group commit's writer thread that
stalled every publisher of the turn: 52 of 3,000 turns of 16 lines took 17-20 ms instead of
0.3 ms (p99 17 ms), which was the publish API's p99 in the harness.

So the server's connections open with ``wal_autocheckpoint=0`` (``COMMIT_PRAGMAS``) and a
checkpointer runs a ``PASSIVE`` checkpoint every ``INTERVAL_S`` on a database thread of the
shared pool: WAL mode lets it run while the writer commits, it waits for no lock, and it copies
what no reader still needs. The log stays about a second of writes long. Other processes that
write the file (workers, the Node backend) keep SQLite's default. PostgreSQL has nothing to do.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Optional, Tuple

import peewee

from .periodic import PeriodicJob

log = logging.getLogger("sentri.store")

# Seconds between checkpoints: the log holds about this long of writes.
INTERVAL_S = 1.0
# What the server's SQLite connections add to the pragmas of every connection.
COMMIT_PRAGMAS = (("wal_autocheckpoint", 0),)

Checkpoint = Tuple[int, int, int]  # busy, pages in the log, pages checkpointed (SQLite's answer)


class WalCheckpointer:
    """``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval_s``, one at a time, on ``run``'s threads."""

    def __init__(self, database: peewee.Database, run: Callable[[Callable[[], Checkpoint]], Awaitable[Checkpoint]],
                 interval_s: float = INTERVAL_S) -> None:
        self.database = database
        self.run = run
        self._job = PeriodicJob(self.checkpoint, interval_s)
        self._failing = False
        self.checkpoints = 0  # checkpoints that completed (tests read it)

    def start(self) -> None:
        if isinstance(self.database, peewee.SqliteDatabase):
            self._job.start()

    def stop(self) -> None:
        self._job.stop()

    async def checkpoint(self) -> Optional[Checkpoint]:
        """One passive checkpoint; its answer, or None if it failed (logged once per failing spell)."""
        try:
            result = await self.run(self._checkpoint)
        except Exception as error:
            if not self._failing:
                log.warning("WAL checkpoint failed: %s", type(error).__name__)
                self._failing = True
            return None
        if self._failing:
            log.info("WAL checkpoints work again")
            self._failing = False
        self.checkpoints += 1
        return result

    def _checkpoint(self) -> Checkpoint:
        database: Any = self.database
        busy, in_log, checkpointed = database.execute_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(busy), int(in_log), int(checkpointed)
