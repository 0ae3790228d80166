"""Database access: opening the database, creating missing tables, and the stream lookups.

This is the only module that blocks on the database, and it never does so on the IOLoop
thread: every public coroutine runs its queries in a bounded thread pool, each worker
holding a pooled connection for the length of one call (``connection_context``). peewee
on the loop thread would share one connection and one transaction across coroutines.
"""

from __future__ import annotations

import asyncio
import enum
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, TypeVar
from urllib.parse import unquote, urlsplit

import peewee
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

from . import jsontext, sse
from .config import SettingsError
from .models import (
    MODELS,
    RUN_JSON_LIST_KEYS,
    RUN_JSON_OBJECT_KEYS,
    Project,
    Run,
    RunLog,
    Workspace,
    WorkspaceMember,
    create_table_statements,
    database_proxy,
)
from .shared_reads import SharedReads
from .signing import ArtifactSigner

T = TypeVar("T")

# How many of a snapshot's newest log lines are remembered to drop live duplicates of them.
SNAPSHOT_LOG_TAIL = 256

SQLITE_PRAGMAS = (
    # WAL lets the Node backend write while streams read; busy_timeout rides out its locks.
    ("journal_mode", "wal"),
    ("busy_timeout", 5000),
    ("synchronous", "normal"),
)


def open_database(url: str, data_dir: str, max_connections: int) -> peewee.Database:
    """A pooled peewee database for ``DATABASE_URL`` (unset: the SQLite file in ``data_dir``)."""
    if not url:
        os.makedirs(data_dir, exist_ok=True)
        return _sqlite(os.path.join(data_dir, "sentri.db"), max_connections)
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
        return _sqlite(path, max_connections)
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


def _sqlite(path: str, max_connections: int) -> peewee.Database:
    database: peewee.Database = PooledSqliteDatabase(
        path,
        max_connections=max_connections,
        stale_timeout=300,
        pragmas=SQLITE_PRAGMAS,
        # Pooled connections move between worker threads; each is used by one thread at a time.
        check_same_thread=False,
    )
    return database


def execute_sql(database: Any, sql: str) -> None:
    """``Database.execute_sql``, which peewee's stubs leave untyped."""
    database.execute_sql(sql)


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
    # The newest log lines the snapshot holds: a log stored after the history position was
    # read is in the snapshot AND among the held live frames; the hub drops that second copy.
    snapshot_logs: FrozenSet[str] = frozenset()

    @property
    def is_running(self) -> bool:
        return self.status == "running"


def decode_json_column(raw: Any, default: Any) -> Any:
    if raw is None or raw == "":
        return default
    if not isinstance(raw, str):
        return raw
    try:
        return jsontext.loads(raw)
    except ValueError:  # not JSON, or nested too deep to encode again (jsontext.TooDeepError)
        return default


def run_to_json(row: Dict[str, Any], logs: List[str]) -> Dict[str, Any]:
    """The Node API's run object: camelCase keys in table order, JSON columns decoded."""
    run: Dict[str, Any] = {}
    for key, value in row.items():
        if key in RUN_JSON_LIST_KEYS:
            run[key] = decode_json_column(value, [])
        elif key in RUN_JSON_OBJECT_KEYS:
            run[key] = decode_json_column(value, None)
        elif key == "logs":
            legacy = decode_json_column(value, [])
            run[key] = logs if logs else (legacy if isinstance(legacy, list) else [])
        else:
            run[key] = value
    return run


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
        self._run_fields: Sequence[peewee.Field] = Run._meta.sorted_fields
        # Told how long each ``run`` took, queueing included (the metrics' lookup histogram).
        self.timing: Callable[[float], None] = lambda seconds: None
        self.shared_reads = SharedReads()

    def bind(self) -> None:
        """Point the models at this database and learn which run columns the table has."""
        database_proxy.initialize(self.database)
        ensure_schema(self.database)
        with self.database.connection_context():
            present = {column.name.lower() for column in self.database.get_columns("runs")}
        # A table created by an older Node backend may lack newer columns: read what is there.
        self._run_fields = [field for field in Run._meta.sorted_fields if field.column_name in present]

    async def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` on a database thread with a connection of its own."""

        def in_connection() -> T:
            with self.database.connection_context():
                return work()

        started = time.monotonic()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, in_connection)
        finally:
            self.timing(time.monotonic() - started)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        close_all = getattr(self.database, "close_all", None)
        if close_all is not None:
            close_all()

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

    def find_run_in_workspace(self, run_id: str, workspace_id: str) -> Tuple[Optional[Dict[str, Any]], bool]:
        """The live run row and whether its project is live in the workspace, in one query.

        One indexed query answers both "no such run" and "run of another workspace", so the two
        cost the same and a caller cannot tell them apart by timing.
        """
        project = Project.alias("p")
        row = (
            Run.select(*self._run_fields, project.id.alias("_project_id"))
            .join(
                project,
                peewee.JOIN.LEFT_OUTER,
                on=(
                    (project.id == Run.projectId)
                    & (project.workspaceId == workspace_id)
                    & project.deletedAt.is_null()
                ),
            )
            .where((Run.id == run_id) & Run.deletedAt.is_null())
            .dicts()
            .first()
        )
        if row is None:
            return None, False
        in_workspace = row.pop("_project_id") is not None
        return row, in_workspace

    def log_messages(self, run_id: str) -> List[str]:
        query = RunLog.select(RunLog.message).where(RunLog.runId == run_id).order_by(RunLog.seq, RunLog.id)
        return [message for (message,) in tuples(query)]

    def open_stream_sync(self, user_id: str, claimed_workspace: Optional[str], run_id: str,
                         include_snapshot: bool = True) -> StreamLookup:
        """The checks of docs/stream.md §2 and, when ``include_snapshot``, the snapshot (a resume skips it)."""
        workspace_id = self.resolve_workspace(user_id, claimed_workspace)
        if workspace_id is None:
            return StreamLookup(StreamOutcome.NO_WORKSPACE)
        row, in_workspace = self.find_run_in_workspace(run_id, workspace_id)
        if row is None:
            return StreamLookup(StreamOutcome.RUN_NOT_FOUND, workspace_id)
        if not in_workspace:
            return StreamLookup(StreamOutcome.PROJECT_NOT_FOUND, workspace_id)
        logs = self.log_messages(run_id) if include_snapshot else []
        run = run_to_json(row, logs)
        if include_snapshot:
            self.signer.sign_run(run, now_ms=int(time.time() * 1000))
        status = run.get("status")
        return StreamLookup(
            StreamOutcome.FOUND,
            workspace_id,
            status=status if isinstance(status, str) else None,
            snapshot_json=sse.to_utf8(sse.dumps_js({"type": "snapshot", "run": run})) if include_snapshot else b"",
            done_json=b"" if status == "running" else sse.to_utf8(sse.dumps_js(done_payload(run))),
            snapshot_logs=frozenset(logs[-SNAPSHOT_LOG_TAIL:]),
        )

    async def open_stream(self, user_id: str, claimed_workspace: Optional[str], run_id: str,
                          include_snapshot: bool = True) -> StreamLookup:
        # Concurrent identical connects (a reconnect storm) share one read: see shared_reads.
        key = (user_id, claimed_workspace, run_id, include_snapshot)
        return await self.shared_reads.run(
            key, self.run, lambda: self.open_stream_sync(user_id, claimed_workspace, run_id, include_snapshot)
        )

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
