"""Two producers logging to one run at once never share a ``seq`` (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import pytest

from sentri.models import RunLog, database_proxy
from sentri.store import ensure_schema, open_database
from sentri.writes import append_log

from . import pg

PG_SERVER = "postgresql://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def models_bound_to(url, tmp_path) -> Iterator[object]:
    """The database at ``url`` with the schema, the models' for the block."""
    database = open_database(url, str(tmp_path), 8)
    ensure_schema(database)
    previous = database_proxy.obj
    database_proxy.initialize(database)
    try:
        yield database
    finally:
        database_proxy.initialize(previous)
        database.close_all()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path) -> Iterator[object]:
    if request.param == "sqlite":
        with models_bound_to(f"sqlite:///{tmp_path}/logs.db", tmp_path) as database:
            yield database
        return
    with pg.temporary_database(PG_SERVER) as url, models_bound_to(url, tmp_path) as database:
        yield database


def test_concurrent_producers_get_seq_one_to_n_without_duplicates(database):
    producers, per_producer = 4, 40
    start = threading.Barrier(producers)
    errors = []

    def produce(name: str) -> None:
        start.wait()
        try:
            for n in range(per_producer):
                with database.connection_context():
                    append_log("RUN-1", f"[2026-01-01T00:00:00.000Z] {name} {n}", "info")
        except Exception as error:  # pragma: no cover - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=produce, args=(f"p{i}",)) for i in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with database.connection_context():
        query = RunLog.select(RunLog.seq).where(RunLog.runId == "RUN-1").order_by(RunLog.seq)
        seqs = [seq for (seq,) in query.tuples()]
    assert seqs == list(range(1, producers * per_producer + 1))
