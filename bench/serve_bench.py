"""Start Sentri for the benchmark: a prepared database, then the real server, one process.

Prepares the benchmark's fixture (``../shared/bench/fixtures/run.json``) in a database:
runs ``run-0`` .. ``run-<N-1>``, all ``running``, in project ``proj-1`` of workspace
``ws-1``, each with the fixture's three stored log lines, and one user who owns ``ws-1``.
Then serves with the settings the harness passes through the environment.

The harness publishes with ``POST /emit/run-<n>`` (the seed's stub route). That route is
bench-only: it exists when ``SENTRI_BENCH_EMIT=1`` and lives in this file, never in the
production routes; it calls ``hub.emit`` exactly as an in-process producer would. The Redis
publish mode needs no route (``REDIS_URL`` makes the server relay ``sentri:run:*``).

    python bench/serve_bench.py --prepare-only        # fill the database, print a token
    python bench/serve_bench.py                       # fill it (if empty) and serve
    python bench/serve_bench.py --token               # print a token for the bench user

Settings come from the environment exactly as for ``sentri serve`` (DATABASE_URL, JWT_SECRET,
PORT, ...). ``SENTRI_BENCH_RUNS`` (default 100) sets the number of runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time
from typing import Any, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the project root, when run as a script

import tornado.web  # noqa: E402

from sentri import app as sentri_app  # noqa: E402
from sentri.cli import listen  # noqa: E402
from sentri.config import Settings, load_settings  # noqa: E402
from sentri.context import Context  # noqa: E402
from sentri.logs import configure_logging  # noqa: E402
from sentri.models import Project, Run, RunLog, User, Workspace, WorkspaceMember  # noqa: E402
from sentri.runtime import run, tune_gc  # noqa: E402
from sentri.tokens import mint  # noqa: E402

BENCH_USER = {"id": "usr-bench", "name": "Bench User", "email": "bench@sentri.local", "role": "admin"}
WORKSPACE_ID = "ws-1"
PROJECT_ID = "proj-1"
# The fixture every peer's snapshot carries (same values as ../shared/bench/fixtures/run.json).
FIXTURE: Dict[str, Any] = {
    "projectId": PROJECT_ID,
    "status": "running",
    "type": "test_run",
    "startedAt": "2026-01-01T00:00:00.000Z",
    "total": 12,
    "tests": [],
    "logs_seed": [
        "[00:00:00] run started",
        "[00:00:01] crawling https://example.test/",
        "[00:00:02] generated 12 tests",
    ],
}
CREATED_AT = "2026-01-01T00:00:00.000Z"


def prepare_sync(run_count: int) -> int:
    """Insert the fixture rows that are missing; returns how many runs were created."""
    User.insert(passwordHash="", createdAt=CREATED_AT, **BENCH_USER).on_conflict_ignore().execute()
    Workspace.insert(id=WORKSPACE_ID, name="Bench", slug="bench", ownerId=BENCH_USER["id"],
                     createdAt=CREATED_AT).on_conflict_ignore().execute()
    WorkspaceMember.insert(id="wm-bench", workspaceId=WORKSPACE_ID, userId=BENCH_USER["id"], role="admin",
                           joinedAt=CREATED_AT).on_conflict_ignore().execute()
    Project.insert(id=PROJECT_ID, name="Bench shop", url="https://example.test/", status="active",
                   createdAt=CREATED_AT, workspaceId=WORKSPACE_ID).on_conflict_ignore().execute()
    existing = {run_id for (run_id,) in Run.select(Run.id).tuples()}
    created = 0
    for n in range(run_count):
        run_id = f"run-{n}"
        if run_id in existing:
            continue
        Run.insert(id=run_id, projectId=PROJECT_ID, type=FIXTURE["type"], status=FIXTURE["status"],
                   startedAt=FIXTURE["startedAt"], total=FIXTURE["total"], tests=json.dumps(FIXTURE["tests"]),
                   workspaceId=WORKSPACE_ID).execute()
        for seq, message in enumerate(FIXTURE["logs_seed"], start=1):
            RunLog.insert(runId=run_id, seq=seq, level="info", message=message, createdAt=CREATED_AT).execute()
        created += 1
    return created


def stored_log_lines() -> int:
    return int(RunLog.select().count())


def reset_logs_sync() -> int:
    """``BENCH_RESET_LOGS=1``: drop the lines earlier runs of the bench stored (a reused database)."""
    return int(RunLog.delete().where(RunLog.seq > len(FIXTURE["logs_seed"])).execute())


class EmitHandler(tornado.web.RequestHandler):
    """Bench-only ``POST /emit/<runId>``: the body is the event, as the seed's stub route does."""

    def initialize(self, context: Context) -> None:
        self.context = context

    def post(self, run_id: str) -> None:
        try:
            body = json.loads(self.request.body)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            self.set_status(400)
            self.finish({"error": "body must be a JSON object with a string type"})
            return
        self.context.hub.emit(run_id, body["type"], body)
        self.finish(b'{"ok":true}')


class ReadyHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish(b'{"ok":true}')


def bench_routes(context: Context) -> List[Tuple[Any, ...]]:
    return [(r"/emit/([^/]+)", EmitHandler, {"context": context}),
            (r"/bench/ready", ReadyHandler)]


class Diagnostics:
    """``SENTRI_BENCH_DIAG=1``: every 5 s one line of loop lag, GC pauses and lookup sharing."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.gc_pause_s = 0.0
        self.gc_max_s = 0.0
        self.gc_runs = [0, 0, 0]
        self._gc_started = 0.0
        self.max_lag_s = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: Dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_started
        self.gc_pause_s += pause
        self.gc_max_s = max(self.gc_max_s, pause)
        self.gc_runs[info["generation"]] += 1

    async def watch(self) -> None:
        last = time.monotonic()
        while True:
            for _ in range(50):
                await asyncio.sleep(0.1)
                now = time.monotonic()
                self.max_lag_s = max(self.max_lag_s, now - last - 0.1)
                last = now
            store = self.context.store
            print(f"diag streams={self.context.hub.stream_count} max_loop_lag_ms={self.max_lag_s * 1000:.0f} "
                  f"gc_pause_ms={self.gc_pause_s * 1000:.0f} gc_max_ms={self.gc_max_s * 1000:.0f} "
                  f"gc_runs={self.gc_runs} lookups_read={store.reads} lookups_shared={store.shared} "
                  f"objects={len(gc.get_objects())}", flush=True)
            self.max_lag_s = self.gc_pause_s = self.gc_max_s = 0.0
            self.gc_runs = [0, 0, 0]


async def serve(context: Context) -> None:
    application = sentri_app.make_app(context)
    if os.environ.get("SENTRI_BENCH_EMIT") == "1":
        application.wildcard_router.add_rules(bench_routes(context))
    server = listen(context, application)
    await sentri_app.start(context)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    if os.environ.get("SENTRI_BENCH_DIAG") == "1":
        watcher = asyncio.ensure_future(Diagnostics(context).watch())  # noqa: F841 (runs until exit)
    stored_at_start = await context.store.run(stored_log_lines)
    print(f"bench server on {context.settings.host}:{context.settings.port} pid {os.getpid()}; "
          f"run_logs rows {stored_at_start}", flush=True)
    try:
        await stopping.wait()
    finally:
        server.stop()
        # What a publish benchmark stored, for "every line in run_logs" (bench/README.md).
        stored = await context.store.run(stored_log_lines) - stored_at_start
        committer = context.publisher.committer if context.publisher else None
        if committer is not None:
            print(f"bench server stored {stored} log lines; group commit: {committer.writes} writes in "
                  f"{committer.transactions} transactions", flush=True)
        await sentri_app.stop(context)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare-only", action="store_true", help="fill the database and exit")
    parser.add_argument("--token", action="store_true", help="print a token for the bench user and exit")
    args = parser.parse_args()
    settings: Settings = load_settings(os.environ)
    configure_logging(settings.log_level, settings.log_json)
    if args.token:
        print(mint(settings.jwt_secret, BENCH_USER, WORKSPACE_ID, lifetime_s=30 * 24 * 3600))
        return 0
    context = sentri_app.build_context(settings)
    run_count = int(os.environ.get("SENTRI_BENCH_RUNS", "100"))
    created = asyncio.run(_prepare(context, run_count))
    if os.environ.get("BENCH_RESET_LOGS") == "1":
        asyncio.run(context.store.run(reset_logs_sync))
    if args.prepare_only:
        context.store.close()
        print(f"prepared {created} new runs")
        return 0
    if os.environ.get("BENCH_SWITCH"):
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH"]))
    delay_ms = float(os.environ.get("BENCH_DB_DELAY_MS", "0"))
    if delay_ms > 0:
        slow_database(context, delay_ms / 1000)
    tune_gc(settings.gc_threshold)  # as `sentri serve` does
    if os.environ.get("BENCH_NO_HIREDIS") == "1":
        without_hiredis()
    # As `sentri serve`: uvloop when installed; BENCH_UVLOOP=0 measures asyncio's own loop.
    run(serve(context), use_uvloop=os.environ.get("BENCH_UVLOOP") != "0")
    return 0


def without_hiredis() -> None:
    """Bench only: the relay's Redis connections parse with redis-py's pure-Python parser even
    where hiredis is installed (``pip install 'sentri-live[hiredis]'``), to measure what it buys."""
    import redis.asyncio.connection as connection

    original = connection.AbstractConnection.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["parser_class"] = connection._AsyncRESP2Parser  # switched to RESP3's if protocol 3
        original(self, *args, **kwargs)

    connection.AbstractConnection.__init__ = init  # type: ignore[method-assign]


def slow_database(context: Context, delay_s: float) -> None:
    """Bench fault: every query waits ``delay_s`` first (on its database thread), like a far or loaded server."""
    database = context.store.database
    execute_sql = database.execute_sql

    def delayed(sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        time.sleep(delay_s)
        return execute_sql(sql, params, *args, **kwargs)

    database.execute_sql = delayed  # type: ignore[method-assign]


async def _prepare(context: Context, run_count: int) -> int:
    return await context.store.run(lambda: prepare_sync(run_count))


if __name__ == "__main__":
    sys.exit(main())
