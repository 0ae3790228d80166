"""The few writes this project makes: log lines, agent events, run progress, a run's end.

They run on a database thread (``Store.run``), never on the IOLoop. ``commit_writes`` stores
many events in one transaction (the group commit of ``sentri.group_commit``): it first locks
every run it appends logs to (SQLite: ``BEGIN IMMEDIATE``, the database's one writer lock;
PostgreSQL: one transaction-scoped advisory lock per run, taken in one fixed order), then
reads each run's last ``seq`` and numbers the new lines after it in the order given. So
producers in any number of processes writing logs for one run never share a ``seq`` and
leave none out.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

import peewee

from .models import Run, RunAgentEvent, database_proxy

LOG_LEVELS = ("info", "warn", "error")


# The last whole second formatted, and its text up to the milliseconds: every log line
# published is stamped, and formatting a datetime cost more than the rest of its checks.
_last_second: Tuple[int, str] = (-1, "")


def iso_now(now: Optional[datetime.datetime] = None) -> str:
    """``new Date().toISOString()``: UTC, milliseconds, ``Z``."""
    global _last_second
    if now is not None:
        utc = now.astimezone(datetime.timezone.utc)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    second, milliseconds = divmod(int(time.time() * 1000), 1000)
    last = _last_second  # read once: database threads stamp too
    if last[0] != second:
        last = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)))
    return f"{last[1]}{milliseconds:03d}Z"


def log_message(text: str, now: Optional[datetime.datetime] = None) -> str:
    """The stored and streamed form of a log line: ``[<ISO time>] <text>``."""
    return f"[{iso_now(now)}] {text}"


LOG = "log"
AGENT_EVENT = "agent_event"
DONE = "done"
# Rows per INSERT and run ids per IN (...): well under SQLite's bound on bound parameters.
_ROWS_PER_INSERT = 100
_IDS_PER_QUERY = 500


class Write(NamedTuple):
    """One durable write: a ``log`` line (body ``message``, ``level``), a checked
    ``agent_event`` body, or a ``done`` body for the run row."""

    run_id: str
    kind: str
    body: Mapping[str, Any]
    level: str = "info"


def _lock_runs(run_ids: Sequence[str]) -> None:
    database = database_proxy.obj
    if isinstance(database, peewee.PostgresqlDatabase) and run_ids:
        # Transaction-scoped advisory locks on the run ids, not FOR UPDATE on the runs' rows:
        # they serialise producers even when a row is missing or held by the Node backend.
        # Taken in hash order (PostgreSQL runs a volatile function after ORDER BY), so two
        # group commits that share runs never wait for each other in a cycle.
        database.execute_sql(  # type: ignore[no-untyped-call]
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtext(r) AS k FROM unnest(%s::text[]) AS r) "
            "AS keys ORDER BY k", (list(run_ids),))


# The group commit's statements, as SQL text: built with peewee's query objects they cost
# more CPU than the database's own work (a third of a turn of ~9 lines, py-spy over
# bench/publish_cost.py), and that CPU is taken from the IOLoop under the GIL. Only
# placeholders are formatted into them (S608 below); every value is a bound parameter.
def _placeholders(count: int, param: str) -> str:
    return ",".join([param] * count)


def _execute(sql: str, params: Sequence[Any]) -> Any:
    return database_proxy.obj.execute_sql(sql, params)


def last_seqs_sql(count: int, param: str) -> str:
    """The statement that reads the last ``seq`` of ``count`` runs (their ids its parameters).

    One scalar ``MAX(seq)`` per run: both databases answer that from the end of the
    ``(runId, seq)`` index, one entry a run. ``SELECT runId, MAX(seq) ... WHERE runId IN (...)
    GROUP BY runId`` reads every line of every run instead, so a turn cost more the longer its
    runs had logged: 834 us against 42 us for 16 runs of 213 lines each on SQLite, growing
    with every line (tests/test_durable_logs.py counts what each reads).
    """
    ids = ",".join([f"({param})"] * count)
    return (f"WITH ids(runId) AS (VALUES {ids}) "  # noqa: S608 (placeholders only)
            "SELECT runId, (SELECT MAX(seq) FROM run_logs WHERE run_logs.runId = ids.runId) FROM ids")


def _last_seqs(run_ids: Sequence[str]) -> Dict[str, int]:
    last: Dict[str, int] = {}
    param = database_proxy.obj.param
    for start in range(0, len(run_ids), _IDS_PER_QUERY):
        chunk = run_ids[start:start + _IDS_PER_QUERY]
        for run_id, seq in _execute(last_seqs_sql(len(chunk), param), chunk).fetchall():
            last[run_id] = int(seq or 0)
    return last


def live_runs(run_ids: Sequence[str]) -> Set[str]:
    """Which of ``run_ids`` are runs that exist and are not soft-deleted (the publish API's check)."""
    found: Set[str] = set()
    param = database_proxy.obj.param
    for start in range(0, len(run_ids), _IDS_PER_QUERY):
        chunk = run_ids[start:start + _IDS_PER_QUERY]
        ids = _placeholders(len(chunk), param)
        cursor = _execute(f'SELECT id FROM runs WHERE id IN ({ids}) AND deletedAt IS NULL', chunk)  # noqa: S608
        found.update(run_id for (run_id,) in cursor.fetchall())
    return found


def _insert_logs(rows: Sequence[Tuple[str, int, str, str, str]]) -> None:
    param = database_proxy.obj.param
    row = f"({_placeholders(5, param)})"
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start:start + _ROWS_PER_INSERT]
        _execute('INSERT INTO run_logs (runId, seq, level, message, createdAt) VALUES '  # noqa: S608
                 + ",".join([row] * len(chunk)), [value for one in chunk for value in one])


def _write_transaction() -> Any:
    database = database_proxy.obj
    return database.atomic("IMMEDIATE") if isinstance(database, peewee.SqliteDatabase) else database.atomic()


def commit_writes(writes: Sequence[Write], agent_events_table: bool = True) -> List[Optional[int]]:
    """Store ``writes`` in one transaction, in order; returns each log line's ``seq`` (else None).

    An ``agent_event`` is stored only with ``agent_events_table`` (where the table exists).
    """
    seqs: List[Optional[int]] = [None] * len(writes)
    with _write_transaction():
        log_runs = sorted({write.run_id for write in writes if write.kind == LOG})
        _lock_runs(log_runs)
        last = _last_seqs(log_runs)
        created_at = iso_now()
        rows: List[Tuple[str, int, str, str, str]] = []
        agent_rows: List[Dict[str, Any]] = []
        for index, write in enumerate(writes):
            if write.kind == LOG:
                seq = last.get(write.run_id, 0) + 1
                last[write.run_id] = seq
                seqs[index] = seq
                rows.append((write.run_id, seq, write.level if write.level in LOG_LEVELS else "info",
                             write.body["message"], created_at))
            elif write.kind == AGENT_EVENT and agent_events_table:
                agent_rows.append(agent_event_row(write.run_id, write.body))
        _insert_logs(rows)
        for start in range(0, len(agent_rows), _ROWS_PER_INSERT):
            RunAgentEvent.insert_many(agent_rows[start:start + _ROWS_PER_INSERT]).execute()
        # After the lines: a run's end is recorded with (never before) what it logged.
        for write in writes:
            if write.kind == DONE:
                finish_run(write.run_id, write.body)
    return seqs


def append_log(run_id: str, message: str, level: str = "info") -> int:
    """Store one log line with the run's next ``seq``; returns that ``seq``."""
    return int(commit_writes([Write(run_id, LOG, {"message": message}, level)])[0] or 0)


def agent_event_row(run_id: str, event: Mapping[str, Any]) -> Dict[str, Any]:
    data = event.get("data")
    return {
        "runId": run_id, "step": event["step"], "agent": event["agent"], "phase": event["phase"],
        "message": event["message"],
        "data": None if data is None else json.dumps(data, ensure_ascii=False, separators=(",", ":")),
        "nextAgent": event.get("nextAgent"), "model": event.get("model"), "createdAt": event["createdAt"],
    }


def append_agent_event(run_id: str, event: Mapping[str, Any]) -> None:
    """Store one checked ``agent_event`` (``sentri.event_intake``) in ``run_agent_events``; data as JSON text."""
    RunAgentEvent.insert(**agent_event_row(run_id, event)).execute()


def update_run(run_id: str, fields: Mapping[str, Any]) -> None:
    """Set run columns by their camelCase names; lists and dicts are stored as JSON text."""
    values: Dict[Any, Any] = {}
    for key, value in fields.items():
        field = Run._meta.fields[key]
        values[field] = json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else value
    Run.update(values).where(Run.id == run_id).execute()


def finish_run(run_id: str, done: Mapping[str, Any]) -> None:
    """Record a ``done`` on the run row: status, counters, ``finishedAt``, ``duration``."""
    row = Run.select(Run.startedAt).where(Run.id == run_id).tuples().first()
    fields: Dict[str, Any] = {"status": done.get("status") or "completed", "finishedAt": iso_now()}
    for key in ("passed", "failed", "total"):
        if fits_integer_column(done.get(key)):
            fields[key] = done[key]
    if row is not None and row[0]:
        try:
            started = datetime.datetime.fromisoformat(str(row[0]).replace("Z", "+00:00"))
            elapsed = datetime.datetime.now(datetime.timezone.utc) - started
            duration_ms = int(elapsed.total_seconds() * 1000)
        except (ValueError, TypeError):
            duration_ms = None
        # A start time weeks old (or in the future) gives no duration the column can hold.
        if fits_integer_column(duration_ms):
            fields["duration"] = duration_ms
    update_run(run_id, fields)


# The Node backend's INTEGER columns are 32-bit on PostgreSQL; a larger value fails the write.
INTEGER_COLUMN_MAX = 2**31 - 1


def fits_integer_column(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INTEGER_COLUMN_MAX
