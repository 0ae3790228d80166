"""The server's commits never checkpoint SQLite's WAL (a checkpoint waits for the disk inside the
commit that crosses SQLite's mark, stalling the group commit's turn); its checkpointer does,
beside them, and the log stays short."""

from __future__ import annotations

import asyncio
from typing import Any, Tuple

import peewee
import pytest

from sentri.app import build_context, start, stop
from sentri.wal_checkpoint import WalCheckpointer
from sentri.writes import Write, commit_writes

from .test_durable_logs import models_bound_to

# A line of about 1 KB: 16 a turn fill about four pages of the log.
LINE = "[2026-01-01T00:00:00.000Z] " + "x" * 1000


def sqlite_database(tmp_path: Any, checkpoint_in_commits: bool) -> Any:
    return models_bound_to(f"sqlite:///{tmp_path}/wal.db", tmp_path, checkpoint_in_commits=checkpoint_in_commits)


def commit_turns(database: Any, turns: int) -> None:
    with database.connection_context():
        for _ in range(turns):
            commit_writes([Write("RUN-1", "log", {"message": LINE})] * 16)


def pages_in_log(database: Any) -> int:
    """How many pages the WAL holds now (SQLite's answer to a checkpoint, which then runs)."""
    with database.connection_context():
        return int(database.execute_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


@pytest.mark.parametrize("checkpoint_in_commits", [True, False])
def test_only_a_database_opened_to_checkpoint_in_commits_does(tmp_path, checkpoint_in_commits):
    with sqlite_database(tmp_path, checkpoint_in_commits) as database:
        commit_turns(database, 600)  # well over SQLite's 1,000-page mark
        pages = pages_in_log(database)
    if checkpoint_in_commits:
        assert pages < 1100  # checkpointed at the mark, and the log started over
    else:
        assert pages > 2000  # every page the commits wrote is still in the log


@pytest.mark.gen_test
async def test_the_checkpointer_copies_the_log_back_beside_the_commits(tmp_path):
    with sqlite_database(tmp_path, checkpoint_in_commits=False) as database:
        loop = asyncio.get_running_loop()

        async def run(work: Any) -> Tuple[int, int, int]:
            def in_connection() -> Tuple[int, int, int]:
                with database.connection_context():
                    return work()  # type: ignore[no-any-return]

            return await loop.run_in_executor(None, in_connection)

        checkpointer = WalCheckpointer(database, run, interval_s=0.05)
        checkpointer.start()
        try:
            for _ in range(10):  # about 3,300 pages in all, 330 between checkpoints
                await loop.run_in_executor(None, commit_turns, database, 30)
                await asyncio.sleep(0.1)  # a checkpoint or two
            assert checkpointer.checkpoints >= 10
            busy, in_log, checkpointed = await checkpointer.checkpoint()  # type: ignore[misc]
        finally:
            checkpointer.stop()
        # The log started over after each checkpoint: it holds the last writes only, all copied back.
        assert busy == 0 and in_log < 1000 and checkpointed == in_log
        assert await loop.run_in_executor(None, pages_in_log, database) < 1000


@pytest.mark.gen_test
async def test_the_server_checkpoints_its_sqlite_database_itself(settings, io_loop):
    context = build_context(settings)
    sqlite = isinstance(context.store.database, peewee.SqliteDatabase)
    try:
        autocheckpoint = None
        if sqlite:
            with context.store.database.connection_context():
                autocheckpoint = context.store.database.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0]
        await start(context)
        await asyncio.sleep(1.3)
        ran = context.store.checkpointer.checkpoints
        await stop(context)
    finally:
        context.store.close()
    assert (autocheckpoint, ran) == ((0, 1) if sqlite else (None, 0))  # PostgreSQL: nothing to do
