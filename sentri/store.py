"""Database access: opening the database, creating missing tables, and the stream lookups.

This is the only module that blocks on the database, and it never does so on the IOLoop
thread: every public coroutine runs its queries in a bounded thread pool, each worker
holding a pooled connection for the length of one call (``connection_context``). peewee
on the loop thread would share one connection and one transaction across coroutines.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import enum
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, TypeVar, cast
from urllib.parse import unquote, urlsplit

import peewee
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

from . import jsontext, sse
from .config import SettingsError
from .connect_reads import MAX_AGE_S, AgedAnswers
from .models import (
    AGENT_EVENT_FRAME_FIELDS,
    AGENT_EVENTS_TABLE,
    CAMEL_BY_FOLDED,
    MODELS,
    RUN_JSON_LIST_KEYS,
    RUN_JSON_OBJECT_KEYS,
    Project,
    Run,
    RunAgentEvent,
    RunLog,
    Workspace,
    WorkspaceMember,
    create_table_statements,
    database_proxy,
)
from .serial_thread import SerialThread
from .signing import ArtifactSigner
from .wal_checkpoint import COMMIT_PRAGMAS, WalCheckpointer

T = TypeVar("T")

# How many of a snapshot's newest log lines (and agent events) are remembered to drop live
# duplicates of them.
SNAPSHOT_LOG_TAIL = 256

SQLITE_PRAGMAS = (
    # WAL lets the Node backend write while streams read; busy_timeout rides out its locks.
    ("journal_mode", "wal"),
    ("busy_timeout", 5000),
    ("synchronous", "normal"),
)


def close_pool(database: peewee.Database) -> None:
    """Close every connection of a pooled database: ``close()`` closes only the calling thread's,
    and a pooled one left open is reported unclosed when collected (Python 3.13)."""
    close_all = getattr(database, "close_all", None)
    if close_all is not None:
        close_all()
    else:
        database.close()


def open_database(url: str, data_dir: str, max_connections: int,
                  checkpoint_in_commits: bool = True) -> peewee.Database:
    """A pooled peewee database for ``DATABASE_URL`` (unset: the SQLite file in ``data_dir``).

    ``checkpoint_in_commits=False``: SQLite's commits never checkpoint the WAL; the caller runs
    ``Store.checkpointer`` instead (sentri.wal_checkpoint).
    """
    pragmas = SQLITE_PRAGMAS if checkpoint_in_commits else SQLITE_PRAGMAS + COMMIT_PRAGMAS
    if not url:
        os.makedirs(data_dir, exist_ok=True)
        return _sqlite(os.path.join(data_dir, "sentri.db"), max_connections, pragmas)
    parts = urlsplit(url)
    if parts.scheme in ("sqlite", "sqlite3"):
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path:
            raise SettingsError("DATABASE_URL: a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db")
        path = path[1:] if path.startswith("/") else path
        if path != ":memory:":
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise SettingsError(f"DATABASE_URL: folder {folder} does not exist")
        return _sqlite(path, max_connections, pragmas)
    if parts.scheme in ("postgres", "postgresql"):
        name = unquote(parts.path.lstrip("/"))
        if not name or not parts.hostname:
            raise SettingsError("DATABASE_URL: a PostgreSQL URL is postgres://user:password@host:port/database")
        try:
            import psycopg2  # noqa: F401  (imported here so SQLite users need no driver)
        except ImportError:
            raise SettingsError(
                "DATABASE_URL is PostgreSQL but psycopg2 is not installed (pip install 'sentri-live[postgres]')"
            ) from None
        try:
            port = parts.port or 5432
        except ValueError:
            raise SettingsError("DATABASE_URL: the port is not a number") from None
        database: peewee.Database = PooledPostgresqlDatabase(
            name,
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            host=parts.hostname,
            port=port,
            max_connections=max_connections,
            stale_timeout=300,
            connect_timeout=5,
        )
        return database
    raise SettingsError(f"DATABASE_URL: unsupported scheme {parts.scheme!r} (use sqlite:/// or postgres://)")


def _sqlite(path: str, max_connections: int, pragmas: Tuple[Tuple[str, Any], ...]) -> peewee.Database:
    database: peewee.Database = PooledSqliteDatabase(
        path,
        max_connections=max_connections,
        stale_timeout=300,
        pragmas=pragmas,
        # Pooled connections move between worker threads; each is used by one thread at a time.
        check_same_thread=False,
    )
    return database


def execute_sql(database: Any, sql: str) -> None:
    """``Database.execute_sql``, which peewee's stubs leave untyped."""
    database.execute_sql(sql)


def execute_query(database: Any, query: Any) -> Any:
    """``Database.execute``: the query's cursor (peewee's stubs leave it untyped)."""
    return database.execute(query)


def tuples(query: Any) -> List[Tuple[Any, ...]]:
    """A query's rows as tuples (peewee's stubs type the rows as model instances)."""
    return list(query.tuples())


def dialect_of(database: peewee.Database) -> str:
    return "postgres" if isinstance(database, peewee.PostgresqlDatabase) else "sqlite"


def ensure_schema(database: peewee.Database) -> None:
    """Create the tables that are missing, as the Node backend would; leave existing ones alone."""
    with database.connection_context():
        existing = set(database.get_tables())
        for table, statements in create_table_statements(dialect_of(database)).items():
            if table in existing:
                continue
            with database.atomic():
                for statement in statements:
                    execute_sql(database, statement)


class StreamOutcome(enum.Enum):
    NO_WORKSPACE = "no_workspace"
    RUN_NOT_FOUND = "run_not_found"
    PROJECT_NOT_FOUND = "project_not_found"
    FOUND = "found"


@dataclass(frozen=True)
class StreamLookup:
    """What opening a stream found; for FOUND, the snapshot and done payloads already encoded."""

    outcome: StreamOutcome
    workspace_id: Optional[str] = None
    status: Optional[str] = None
    snapshot_json: bytes = b""
    done_json: bytes = b""
    # The newest log lines (and agent events' frame keys) the snapshot holds: one stored after
    # the history position was read is in the snapshot AND among the held live frames; the hub
    # drops that second copy.
    snapshot_logs: FrozenSet[str] = frozenset()

    @property
    def is_running(self) -> bool:
        return self.status == "running"


NO_WORKSPACE_LOOKUP = StreamLookup(StreamOutcome.NO_WORKSPACE)


class _RunInWorkspace:
    """The aliases ``Store.find_run_in_workspace`` queries with, made once.

    peewee makes a new class for every aliased field it is asked for (``FieldAlias.create``);
    made per read, those classes are reference cycles the garbage collector has to find, about
    ten per read. Aliases are plain query nodes, so one set serves every thread.
    """

    runs, project = Run.alias("r"), Project.alias("p")
    run_id, run_project_id, run_deleted_at = runs.id, runs.projectId, runs.deletedAt
    project_id, project_workspace_id, project_deleted_at = project.id, project.workspaceId, project.deletedAt
# A found run's snapshot is reused only at the same (run version here, newest id in history).
ReadVersion = Tuple[int, Optional[str]]


def _is_found(lookup: StreamLookup) -> bool:
    """A found run's answer carries a snapshot: reused only at the run version it was read at."""
    return lookup.outcome is StreamOutcome.FOUND


def decode_json_column(raw: Any, default: Any) -> Any:
    if raw is None or raw == "":
        return default
    if not isinstance(raw, str):
        return raw
    try:
        return jsontext.loads(raw)
    except ValueError:  # not JSON, or nested too deep to encode again (jsontext.TooDeepError)
        return default


# How a column's value becomes the snapshot's: as the driver gives it, or JSON text decoded.
RAW, JSON_LIST, JSON_OBJECT, LEGACY_LOGS, PG_TEXT = range(5)
# PostgreSQL types node-postgres hands over as strings (int8, numeric): so does the snapshot.
_PG_TEXT_TYPE_CODES = frozenset({20, 1700})
# Distinct row shapes remembered per table; a shape only changes when a migration runs.
_MAX_SHAPES = 16


def column_key(name: str, dialect: str) -> str:
    """A column's key in the Node API's object: folded PostgreSQL names back to camelCase."""
    return CAMEL_BY_FOLDED.get(name, name) if dialect == "postgres" else name


def js_value(value: Any) -> Any:
    """A column value the JSON encoder cannot write, as node-postgres and JSON.stringify write it."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


_PLAIN_TYPES = (str, int, float, list, dict, type(None))


@dataclass(frozen=True)
class RowShape:
    """One shape of a table's rows (its columns in table order) and how each becomes a key.

    Computed once per shape (``ShapeCache``), then applied to every row of that shape: every
    column is kept, in its table position; the known JSON columns are decoded.
    """

    keys: Tuple[str, ...]
    kinds: Tuple[int, ...]

    @classmethod
    def of(cls, columns: Sequence[Tuple[str, Any]], dialect: str, json_lists: Sequence[str] = (),
           json_objects: Sequence[str] = (), legacy_logs: bool = False) -> RowShape:
        keys: List[str] = []
        kinds: List[int] = []
        for name, type_code in columns:
            key = column_key(name, dialect)
            keys.append(key)
            if key in json_lists:
                kinds.append(JSON_LIST)
            elif key in json_objects:
                kinds.append(JSON_OBJECT)
            elif legacy_logs and key == "logs":
                kinds.append(LEGACY_LOGS)
            elif dialect == "postgres" and type_code in _PG_TEXT_TYPE_CODES:
                kinds.append(PG_TEXT)
            else:
                kinds.append(RAW)
        return cls(tuple(keys), tuple(kinds))

    def to_json(self, values: Sequence[Any], logs: Optional[List[str]] = None) -> Dict[str, Any]:
        """A row as the Node API's object; ``logs`` (run_logs lines) replaces the legacy column."""
        row: Dict[str, Any] = {}
        for key, kind, value in zip(self.keys, self.kinds, values):
            if kind == RAW:
                row[key] = value if isinstance(value, _PLAIN_TYPES) else js_value(value)
            elif kind == JSON_LIST:
                row[key] = decode_json_column(value, [])
            elif kind == JSON_OBJECT:
                row[key] = decode_json_column(value, None)
            elif kind == LEGACY_LOGS:
                legacy = decode_json_column(value, [])
                row[key] = logs if logs else (legacy if isinstance(legacy, list) else [])
            else:
                row[key] = None if value is None else str(value)
        return row


@dataclass(frozen=True)
class ShapedRow:
    """A row as read (values in table order) with its shape."""

    shape: RowShape
    values: Tuple[Any, ...]

    def to_json(self, logs: Optional[List[str]] = None) -> Dict[str, Any]:
        return self.shape.to_json(self.values, logs)


class ShapeCache:
    """Row shapes by the cursor's columns: a migration (a new column) makes a new entry."""

    def __init__(self, dialect: str, **rules: Any) -> None:
        self.dialect = dialect
        self.rules = rules
        self._shapes: Dict[Tuple[Tuple[str, Any], ...], RowShape] = {}

    def shape(self, description: Sequence[Sequence[Any]]) -> RowShape:
        columns = tuple((column[0], column[1]) for column in description)
        shape = self._shapes.get(columns)
        if shape is None:
            shape = RowShape.of(columns, self.dialect, **self.rules)
            if len(self._shapes) >= _MAX_SHAPES:
                self._shapes.clear()
            self._shapes[columns] = shape
        return shape


def with_logs(run: Dict[str, Any], logs: List[str]) -> Dict[str, Any]:
    """``{...run, logs}``: in the ``logs`` column's place (decoded there), else last."""
    if "logs" not in run:
        run["logs"] = logs
    return run


def agent_event_frame_key(row: Dict[str, Any]) -> str:
    """The key of the live frame a stored agent event was streamed as (``sse.log_message_of``)."""
    event = {"type": "agent_event", **{key: row.get(key) for key in AGENT_EVENT_FRAME_FIELDS}}
    return sse.agent_event_key(sse.dumps_js(event))


def done_payload(run: Dict[str, Any]) -> Dict[str, Any]:
    """The ``done`` sent on connect to a finished run (docs/stream.md §8), keys in the Node order."""
    done: Dict[str, Any] = {"type": "done", "status": run.get("status")}
    for key in ("passed", "failed", "total"):
        if run.get(key) is not None:
            done[key] = run[key]
    tests = run.get("tests")
    if isinstance(tests, list):
        done["testsGenerated"] = len(tests)
    return done


class Store:
    """The stream lookups, run in a bounded pool of threads off the IOLoop."""

    def __init__(self, database: peewee.Database, signer: ArtifactSigner, workers: int) -> None:
        self.database = database
        self.signer = signer
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sentri-db")
        # The group commit's turns, one at a time (sentri.group_commit): a thread of their own.
        self.writer = SerialThread("sentri-db-writer")
        # SQLite's WAL checkpoints, beside the writer's commits (started with the server).
        self.checkpointer = WalCheckpointer(database, self.run)
        dialect = dialect_of(database)
        self._run_shapes = ShapeCache(dialect, json_lists=RUN_JSON_LIST_KEYS, json_objects=RUN_JSON_OBJECT_KEYS,
                                      legacy_logs=True)
        self._agent_event_shapes = ShapeCache(dialect, json_objects=("data",))
        # Whether the newer Node backend's run_agent_events table exists (learnt once, in bind).
        self.has_agent_events = False
        # Told how long each ``run`` took, queueing included (the metrics' lookup histogram).
        self.timing: Callable[[float], None] = lambda seconds: None
        # Answers shared between connects (sentri.connect_reads): memberships, and runs with their snapshot.
        self.max_age_s = MAX_AGE_S
        self.clock: Callable[[], float] = time.monotonic
        # The run's version on the hub (changes with every event; None: no listener here).
        self.run_version: Callable[[str], Optional[int]] = lambda run_id: None
        self._workspaces: AgedAnswers[Optional[str]] = AgedAnswers()
        self._runs: AgedAnswers[StreamLookup] = AgedAnswers()
        self.reads = 0  # lookups that went to the database
        self.shared = 0  # lookups answered by another's read

    def bind(self) -> None:
        """Point the models at this database and learn whether the agent events table exists."""
        database_proxy.initialize(self.database)
        ensure_schema(self.database)
        with self.database.connection_context():
            # The snapshot's shape depends on it: detected once, not per request.
            self.has_agent_events = AGENT_EVENTS_TABLE in self.database.get_tables()

    async def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` on a database thread with a connection of its own."""
        loop = asyncio.get_running_loop()
        return await self._timed(loop.run_in_executor(self.executor, self._in_connection(work)))

    async def write(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the writer thread with a connection of its own, after the writes before it."""
        return await self._timed(self.writer.run(self._in_connection(work)))

    def _in_connection(self, work: Callable[[], T]) -> Callable[[], T]:
        def in_connection() -> T:
            with self.database.connection_context():
                return work()

        return in_connection

    async def _timed(self, result: Awaitable[T]) -> T:
        started = time.monotonic()
        try:
            return await result
        finally:
            self.timing(time.monotonic() - started)

    def close(self) -> None:
        self.checkpointer.stop()
        self.writer.close()
        self.executor.shutdown(wait=True)
        close_pool(self.database)

    # -- lookups (called on a database thread) ---------------------------------------------

    def resolve_workspace(self, user_id: str, claimed: Optional[str]) -> Optional[str]:
        """The token's workspace if the user belongs to it, else their first: owned, then oldest."""
        if claimed is not None:
            member = (
                WorkspaceMember.select(WorkspaceMember.workspaceId)
                .where((WorkspaceMember.userId == user_id) & (WorkspaceMember.workspaceId == claimed))
                .tuples()
                .first()
            )
            if member is not None:
                return str(member[0])
        owned_first = peewee.Case(None, [(Workspace.ownerId == user_id, 0)], 1)
        first = (
            WorkspaceMember.select(WorkspaceMember.workspaceId)
            .join(Workspace, on=(Workspace.id == WorkspaceMember.workspaceId))
            .where(WorkspaceMember.userId == user_id)
            .order_by(owned_first, WorkspaceMember.joinedAt, WorkspaceMember.id)
            .tuples()
            .first()
        )
        return str(first[0]) if first is not None else None

    def find_run_in_workspace(self, run_id: str, workspace_id: str) -> Tuple[Optional[ShapedRow], bool]:
        """The live run row (``SELECT *``: every column) and whether its project is live in the workspace.

        One indexed query answers both "no such run" and "run of another workspace", so the two
        cost the same and a caller cannot tell them apart by timing. The row is every column of
        the table in table order, as the Node backend's ``SELECT *`` gives it.
        """
        runs, project = _RunInWorkspace.runs, _RunInWorkspace.project
        query = (
            runs.select(peewee.SQL('"r".*'), _RunInWorkspace.project_id.alias("_project_id"))
            .join(
                project,
                peewee.JOIN.LEFT_OUTER,
                on=(
                    (_RunInWorkspace.project_id == _RunInWorkspace.run_project_id)
                    & (_RunInWorkspace.project_workspace_id == workspace_id)
                    & _RunInWorkspace.project_deleted_at.is_null()
                ),
            )
            .where((_RunInWorkspace.run_id == run_id) & _RunInWorkspace.run_deleted_at.is_null())
            .limit(1)
        )
        cursor = execute_query(self.database, query)
        values = cursor.fetchone()
        if values is None:
            return None, False
        shape = self._run_shapes.shape(cursor.description[:-1])
        return ShapedRow(shape, tuple(values[:-1])), values[-1] is not None

    def log_messages(self, run_id: str) -> List[str]:
        query = RunLog.select(RunLog.message).where(RunLog.runId == run_id).order_by(RunLog.seq, RunLog.id)
        return [message for (message,) in tuples(query)]

    def agent_events(self, run_id: str) -> List[Dict[str, Any]]:
        """The run's rows of ``run_agent_events``, every column in table order, ``data`` decoded."""
        query = (
            RunAgentEvent.select(peewee.SQL("*"))
            .where(RunAgentEvent.runId == run_id)
            .order_by(RunAgentEvent.createdAt, RunAgentEvent.id)
        )
        cursor = execute_query(self.database, query)
        shape = self._agent_event_shapes.shape(cursor.description)
        return [shape.to_json(values) for values in cursor.fetchall()]

    def open_stream_sync(self, user_id: str, claimed_workspace: Optional[str], run_id: str,
                         include_snapshot: bool = True, member_of: Optional[str] = None) -> StreamLookup:
        """The checks of docs/stream.md §2 and, when ``include_snapshot``, the snapshot (a resume skips it).

        ``member_of``: the user's workspace, already resolved (within its bound of reuse).
        """
        workspace_id = member_of if member_of is not None else self.resolve_workspace(user_id, claimed_workspace)
        if workspace_id is None:
            return NO_WORKSPACE_LOOKUP
        return self.run_lookup_sync(workspace_id, run_id, include_snapshot)

    def run_lookup_sync(self, workspace_id: str, run_id: str, include_snapshot: bool = True) -> StreamLookup:
        """The run as a member of ``workspace_id`` may see it, with its snapshot when ``include_snapshot``."""
        row, in_workspace = self.find_run_in_workspace(run_id, workspace_id)
        if row is None:
            return StreamLookup(StreamOutcome.RUN_NOT_FOUND, workspace_id)
        if not in_workspace:
            return StreamLookup(StreamOutcome.PROJECT_NOT_FOUND, workspace_id)
        logs = self.log_messages(run_id) if include_snapshot else []
        run = with_logs(row.to_json(logs), logs)
        held_keys = logs[-SNAPSHOT_LOG_TAIL:]
        if include_snapshot:
            if self.has_agent_events:  # {...run, logs, agentEvents}: in that column's place, else last
                events = run["agentEvents"] = self.agent_events(run_id)
                held_keys = held_keys + [agent_event_frame_key(event) for event in events[-SNAPSHOT_LOG_TAIL:]]
            self.signer.sign_run(run, now_ms=int(time.time() * 1000))
        status = run.get("status")
        return StreamLookup(
            StreamOutcome.FOUND,
            workspace_id,
            status=status if isinstance(status, str) else None,
            snapshot_json=sse.to_utf8(sse.dumps_js({"type": "snapshot", "run": run})) if include_snapshot else b"",
            done_json=b"" if status == "running" else sse.to_utf8(sse.dumps_js(done_payload(run))),
            snapshot_logs=frozenset(held_keys),
        )

    async def open_stream(self, user_id: str, claimed_workspace: Optional[str], run_id: str,
                          include_snapshot: bool = True, reserved: bool = False,
                          history_id: Optional[str] = None) -> StreamLookup:
        """``open_stream_sync``, its answers shared between connects within the bounds of sentri.connect_reads.

        ``reserved``: the caller's stream is registered on the hub (holding live events), so it
        may take a found run's snapshot read since the run's last event.
        ``history_id``: the run's newest id in history, read just before (the id the snapshot
        will carry). A snapshot is shared only between connects that read the same id: one
        read before an event reached history (but before this instance delivered it, so the
        run's version had not changed) would lack a log line the id says it holds.
        """
        member_key = (user_id, claimed_workspace)
        member = self._workspaces.get(member_key, self.clock())
        if member is not None:
            self.shared += 1
            return await self._run_lookup(user_id, member.value, run_id, include_snapshot, reserved, history_id)
        joined = self._workspaces.pending(member_key, None)
        if joined is not None:  # the user's workspace is being read: its answer, as its leader gets it
            self.shared += 1
            answer = await asyncio.shield(joined)
            workspace_id = answer.workspace_id if isinstance(answer, StreamLookup) else answer
            return await self._run_lookup(user_id, workspace_id, run_id, include_snapshot, reserved, history_id)
        self.reads += 1
        version = self._read_version(run_id, reserved, history_id)
        if claimed_workspace is not None and self._runs.ready((run_id, claimed_workspace, include_snapshot),
                                                              self.clock(), version, needs_version=_is_found):
            # The run is read (or being read) for the workspace the token names: the membership alone.
            resolving = asyncio.ensure_future(self._resolve_and_keep(user_id, claimed_workspace))
            self._workspaces.start(member_key, None, resolving)
            workspace_id = await asyncio.shield(resolving)
            return await self._run_lookup(user_id, workspace_id, run_id, include_snapshot, reserved, history_id)
        # The workspace and the run in one database trip.
        reading = asyncio.ensure_future(self._read_and_keep(
            lambda: self.open_stream_sync(user_id, claimed_workspace, run_id, include_snapshot),
            run_id, include_snapshot, version, member_key))
        self._workspaces.start(member_key, None, reading)
        return await asyncio.shield(reading)

    def _read_version(self, run_id: str, reserved: bool, history_id: Optional[str]) -> Optional[ReadVersion]:
        """What a found run's snapshot is reused at: the run's version here and the newest id its
        history gave (None: never reused, the caller's stream is not registered or the run has no
        listener here). Part of the answer's key would keep one answer per history id: memory."""
        version = self.run_version(run_id) if reserved else None
        return None if version is None else (version, history_id)

    async def _resolve_and_keep(self, user_id: str, claimed_workspace: Optional[str]) -> Optional[str]:
        def timed() -> Tuple[float, Optional[str]]:
            return self.clock(), self.resolve_workspace(user_id, claimed_workspace)

        read_at, workspace_id = await self.run(timed)
        self._workspaces.put((user_id, claimed_workspace), read_at + self.max_age_s, None, workspace_id,
                             self.clock())
        return workspace_id

    async def _read_and_keep(self, read: Callable[[], StreamLookup], run_id: str, include_snapshot: bool,
                             version: Optional[ReadVersion], member_key: Optional[Tuple[str, Optional[str]]] = None,
                             ) -> StreamLookup:
        """``read`` on a database thread, its answers kept before anyone waiting on it resumes."""

        def timed() -> Tuple[float, StreamLookup]:  # when the read began: queueing does not age it
            return self.clock(), read()

        read_at, lookup = await self.run(timed)
        now, until = self.clock(), read_at + self.max_age_s
        if member_key is not None:
            self._workspaces.put(member_key, until, None, lookup.workspace_id, now)
        if lookup.workspace_id is not None:
            self._runs.put((run_id, lookup.workspace_id, include_snapshot), until, version, lookup, now)
        return lookup

    async def _run_lookup(self, user_id: str, workspace_id: Optional[str], run_id: str, include_snapshot: bool,
                          reserved: bool, history_id: Optional[str]) -> StreamLookup:
        if workspace_id is None:
            return NO_WORKSPACE_LOOKUP
        key = (run_id, workspace_id, include_snapshot)
        version = self._read_version(run_id, reserved, history_id)
        entry = self._runs.get(key, self.clock(), version, needs_version=_is_found)
        if entry is not None:
            self.shared += 1
            return entry.value
        joined = self._runs.pending(key, version)
        if joined is not None:
            self.shared += 1
            return cast(StreamLookup, await asyncio.shield(joined))
        self.reads += 1
        task = asyncio.ensure_future(self._read_and_keep(
            lambda: self.open_stream_sync(user_id, None, run_id, include_snapshot, member_of=workspace_id),
            run_id, include_snapshot, version))
        self._runs.start(key, version, task)
        return cast(StreamLookup, await asyncio.shield(task))

    def run_exists_sync(self, run_id: str) -> bool:
        return Run.select(Run.id).where((Run.id == run_id) & Run.deletedAt.is_null()).exists()

    async def run_exists(self, run_id: str) -> bool:
        """Whether a live (not soft-deleted) run has this id; the publish API's check."""
        return await self.run(lambda: self.run_exists_sync(run_id))

    def ping_sync(self) -> None:
        execute_sql(self.database, "SELECT 1")

    async def ping(self) -> None:
        await self.run(self.ping_sync)


__all__ = ["MODELS", "Store", "StreamLookup", "StreamOutcome", "open_database", "ensure_schema"]
