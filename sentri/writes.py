"""The few writes this project makes: log lines, agent events, run progress, a run's end.

They run on a database thread (``Store.run``), never on the IOLoop. ``append_log`` takes the
next ``seq`` inside a transaction that first locks the run's row, so two producers writing
logs for one run never get the same ``seq``.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Dict, Mapping, Optional

import peewee

from .models import Run, RunAgentEvent, RunLog, database_proxy

LOG_LEVELS = ("info", "warn", "error")


def iso_now(now: Optional[datetime.datetime] = None) -> str:
    """``new Date().toISOString()``: UTC, milliseconds, ``Z``."""
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    utc = moment.astimezone(datetime.timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def log_message(text: str, now: Optional[datetime.datetime] = None) -> str:
    """The stored and streamed form of a log line: ``[<ISO time>] <text>``."""
    return f"[{iso_now(now)}] {text}"


def _lock_run(run_id: str) -> None:
    database = database_proxy.obj
    if isinstance(database, peewee.PostgresqlDatabase):
        # A transaction-scoped advisory lock on the run id, not FOR UPDATE on the run's row:
        # it serialises producers even when the row is missing or held by the Node backend.
        database.execute_sql("SELECT pg_advisory_xact_lock(hashtext(%s))", (run_id,))  # type: ignore[no-untyped-call]


def append_log(run_id: str, message: str, level: str = "info") -> int:
    """Store one log line with the run's next ``seq``; returns that ``seq``."""
    database = database_proxy.obj
    begin = database.atomic("IMMEDIATE") if isinstance(database, peewee.SqliteDatabase) else database.atomic()
    with begin:
        _lock_run(run_id)
        last = RunLog.select(peewee.fn.MAX(RunLog.seq)).where(RunLog.runId == run_id).scalar()
        seq = int(last or 0) + 1
        RunLog.insert(runId=run_id, seq=seq, level=level if level in LOG_LEVELS else "info",
                      message=message, createdAt=iso_now()).execute()
    return seq


def append_agent_event(run_id: str, event: Mapping[str, Any]) -> None:
    """Store one checked ``agent_event`` (``sentri.event_intake``) in ``run_agent_events``; data as JSON text."""
    data = event.get("data")
    RunAgentEvent.insert(
        runId=run_id, step=event["step"], agent=event["agent"], phase=event["phase"], message=event["message"],
        data=None if data is None else json.dumps(data, ensure_ascii=False, separators=(",", ":")),
        nextAgent=event.get("nextAgent"), model=event.get("model"), createdAt=event["createdAt"],
    ).execute()


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
