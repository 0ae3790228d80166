"""Two producers logging to one run at once never share a ``seq``, and finding a run's next
``seq`` reads as much at ten lines as at thousands (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any, Iterator

import peewee
import pytest

from sentri.models import RunLog, database_proxy
from sentri.store import ensure_schema, open_database
from sentri.writes import _last_seqs, append_log, last_seqs_sql

from . import pg

PG_SERVER = "postgresql://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def models_bound_to(url, tmp_path, **options: Any) -> Iterator[Any]:
    """The database at ``url`` (``open_database``'s ``options``) with the schema, the models' for the block."""
    database = open_database(url, str(tmp_path), 8, **options)
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


def store_lines(database: Any, run_id: str, count: int) -> None:
    rows = [(run_id, seq, "info", f"line {seq}", "2026-01-01T00:00:00.000Z") for seq in range(1, count + 1)]
    with database.connection_context():
        for start in range(0, count, 500):
            RunLog.insert_many(rows[start:start + 500], fields=[RunLog.runId, RunLog.seq, RunLog.level,
                                                                 RunLog.message, RunLog.createdAt]).execute()


def work_to_find_last_seq(database: Any, run_id: str) -> int:
    """What the database does to read one run's last ``seq``: SQLite's virtual machine steps,
    PostgreSQL's rows read by the scans of its plan (run with EXPLAIN ANALYZE)."""
    with database.connection_context():
        if not isinstance(database, peewee.PostgresqlDatabase):
            steps = 0

            def count_step() -> int:
                nonlocal steps
                steps += 1
                return 0

            connection = database.connection()
            connection.set_progress_handler(count_step, 1)
            try:
                assert _last_seqs([run_id])
            finally:
                connection.set_progress_handler(None, 1)
            return steps
        database.execute_sql("ANALYZE run_logs")
        (plan,), = database.execute_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + last_seqs_sql(1, "%s"),
                                        [run_id]).fetchall()
        plan = json.loads(plan) if isinstance(plan, str) else plan
        return rows_scanned(plan[0]["Plan"])


def rows_scanned(node: dict) -> int:  # type: ignore[type-arg]
    own = 0
    if "Scan" in node["Node Type"]:
        own = (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
    return own + sum(rows_scanned(child) for child in node.get("Plans", ()))


def test_finding_a_runs_next_seq_reads_as_much_at_ten_lines_as_at_five_thousand(database):
    store_lines(database, "RUN-SHORT", 10)
    store_lines(database, "RUN-LONG", 5000)
    with database.connection_context():
        last = _last_seqs(["RUN-LONG", "RUN-NONE", "RUN-SHORT"])
    assert (last["RUN-LONG"], last.get("RUN-NONE", 0), last["RUN-SHORT"]) == (5000, 0, 10)
    assert work_to_find_last_seq(database, "RUN-LONG") == work_to_find_last_seq(database, "RUN-SHORT")
