"""The ``sentri`` command: ``serve``, ``demo``, ``token``.

``main()`` is a row of small steps (parse, read settings, set up logging, build, run); any
bad setting ends it with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import secrets
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import tornado.netutil
import tornado.web

from . import __version__
from .accept import HTTPServer
from .app import build_context, make_app, start, stop
from .config import Settings, SettingsError, add_setting_flags, load_settings
from .context import Context
from .drain import drain
from .logs import configure_logging
from .runtime import run, tune_gc

if TYPE_CHECKING:
    from .worker_publisher import RunEventPublisher

log = logging.getLogger("sentri")

LISTEN_BACKLOG = 4096  # a reconnect storm arrives all at once; the default 128 would drop SYNs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentri",
        description="Sentri live: streams test-run events to browsers over Server-Sent Events.",
    )
    parser.add_argument("--version", action="version", version=f"sentri {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser("serve", help="run the stream server", description="Run the stream server.")
    add_setting_flags(serve)

    demo = commands.add_parser(
        "demo",
        help="run the server on a local SQLite file with simulated runs (no setup needed)",
        description="Create a SQLite database in the data folder with a demo workspace, user and project, "
        "serve it, and drive simulated test runs; prints a ready-to-paste curl command.",
    )
    demo.add_argument("--step-s", type=float, default=1.0, help="seconds between simulated steps [default 1.0]")
    demo.add_argument("--runs", type=int, default=None, help="stop after this many runs [default: forever]")
    add_setting_flags(demo)

    token = commands.add_parser(
        "token",
        help="print a valid access token for an existing user",
        description="Print an HS256 access token (signed with JWT_SECRET) for a user in the database.",
    )
    token.add_argument("--user", required=True, help="the user's id (users.id)")
    token.add_argument("--workspace", default=None, help="workspace id to put in the token [default: none]")
    token.add_argument("--lifetime-s", type=int, default=7 * 24 * 3600, help="token lifetime [default 7 days]")
    add_setting_flags(token)

    emit = commands.add_parser(
        "emit",
        help="publish one run event through Redis to every instance (needs only REDIS_URL)",
        description="Publish an event on sentri:run:RUN_ID in the relay's format, as a worker would; "
        "prints how many instances were listening.",
    )
    emit.add_argument("run_id", metavar="RUN_ID", help="the run's id (runs.id)")
    emit.add_argument("event_type", metavar="TYPE", nargs="?", help="the event type: log, result, done, ...")
    emit.add_argument("--ndjson", metavar="FILE", default=None,
                      help="publish the events of FILE (- for stdin), one JSON object with its type per line, "
                      "instead of TYPE and JSON; all are checked before any is published")
    emit.add_argument("payload", metavar="JSON", nargs="?", default=None,
                      help='the payload fields as a JSON object, e.g. \'{"status":"completed"}\' [default {}]')
    add_setting_flags(emit)
    return parser


def fail(message: str) -> int:
    print(f"sentri: {message}", file=sys.stderr)
    return 2


def demo_secret(data_dir: str) -> str:
    """The demo's JWT secret, kept in the data folder so printed tokens survive a restart."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "demo-jwt-secret")
    if not os.path.exists(path):
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    with open(path) as handle:
        return handle.read().strip()


def listen(context: Context, application: Optional[tornado.web.Application] = None) -> HTTPServer:
    settings = context.settings
    try:
        sockets = tornado.netutil.bind_sockets(settings.port, settings.host, backlog=LISTEN_BACKLOG)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise SettingsError(f"PORT: {settings.host}:{settings.port} is already in use") from None
        raise SettingsError(f"cannot listen on {settings.host}:{settings.port}: {error.strerror}") from None
    server = HTTPServer(application or make_app(context), xheaders=True, max_header_size=16 * 1024)
    if context.metrics is not None:
        server.on_accept_pause = context.metrics.accept_pauses.inc
    server.add_sockets(sockets)
    return server


def bound_port(server: HTTPServer) -> int:
    return int(next(iter(server._sockets.values())).getsockname()[1])


async def run_server(context: Context, after_start: Optional[Callable[[int], None]] = None) -> None:
    server = listen(context)
    await start(context)
    port = bound_port(server)
    log.info("listening on http://%s:%d", context.settings.host, port)
    if after_start is not None:
        after_start(port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
        # Stop accepting at once: nginx's next connect fails and it picks another instance.
        server.stop()
        await drain(context, context.settings.drain_window_s)
        await settle_publishes(context)
    finally:
        server.stop()
        await stop(context)


async def settle_publishes(context: Context) -> None:
    """Let the publishes this instance holds finish before the process exits (docs/publish.md §3)."""
    if context.publisher is None:
        return
    unfinished = await context.publisher.close(context.settings.shutdown_publish_wait_s)
    if unfinished:
        log.warning("exiting with publishes unfinished", extra={"fields": {"publishes": unfinished}})


def serve(settings: Settings) -> int:
    context = build_context(settings)
    tune_gc(settings.gc_threshold)
    run(run_server(context))
    return 0


def demo(settings: Settings, step_s: float, runs: Optional[int]) -> int:
    from .demo import DEMO_USER, DEMO_WORKSPACE_ID, drive_runs, seed_demo_sync
    from .tokens import mint

    if not settings.jwt_secret:
        settings = settings.replace(jwt_secret=demo_secret(settings.data_dir))
    context = build_context(settings)
    token = mint(settings.jwt_secret, DEMO_USER, DEMO_WORKSPACE_ID)
    # Before listening: a run a stopped demo left "running" is marked interrupted first, so
    # a browser reconnecting after a restart never gets it as running (no done would follow).
    with context.store.database.connection_context():
        seed_demo_sync()

    async def main() -> None:
        base: List[str] = []

        def announce(run_id: str) -> None:
            print(f"\nRun {run_id} is live. Watch it in a browser:\n\n"
                  f"  {base[0]}/runs/{run_id}?token={token}\n\n"
                  f"or stream it:\n\n"
                  f"  curl -N '{base[0]}/api/v1/runs/{run_id}/events?token={token}'\n", flush=True)

        def ready(port: int) -> None:
            host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host  # noqa: S104 (a comparison)
            base.append(f"http://{host}:{port}")
            task = asyncio.ensure_future(drive_runs(context, announce, step_s=step_s, runs=runs))
            if runs is not None:
                task.add_done_callback(lambda _: os.kill(os.getpid(), signal.SIGTERM))

        await run_server(context, after_start=ready)

    asyncio.run(main())
    return 0


def token(settings: Settings, user_id: str, workspace: Optional[str], lifetime_s: int) -> int:
    from .models import User
    from .tokens import mint

    if not settings.jwt_secret:
        raise SettingsError("JWT_SECRET is not set: a token signed with no secret would be refused")
    context = build_context(settings)
    try:
        with context.store.database.connection_context():
            row = User.select(User.id, User.email, User.name, User.role).where(User.id == user_id).dicts().first()
    finally:
        context.store.close()
    if row is None:
        raise SettingsError(f"--user: no user with id {user_id!r}")
    print(mint(settings.jwt_secret, row, workspace, lifetime_s))
    return 0


def parse_payload(text: str, where: str = "JSON") -> Dict[str, Any]:
    from . import jsontext

    try:
        payload = jsontext.loads(text)
    except jsontext.TooDeepError:
        raise SettingsError(f"{where}: the payload must not nest arrays and objects more than {jsontext.MAX_DEPTH} "
                            "levels deep") from None
    except ValueError:
        raise SettingsError(f"{where}: the payload is not valid JSON") from None
    if not isinstance(payload, dict):
        raise SettingsError(f"{where}: the payload must be a JSON object")
    return payload


def worker_publisher_for(settings: Settings) -> RunEventPublisher:
    from .worker_publisher import RunEventPublisher

    # With DATABASE_URL set, a log is stored in run_logs (a done on the run row) first.
    return RunEventPublisher(settings.redis_url, database_url=settings.database_url,
                             history_max_events=settings.history_max_events,
                             history_done_ttl_s=settings.history_done_ttl_s,
                             history_idle_ttl_s=settings.history_idle_ttl_s,
                             cluster_node_compat=settings.redis_cluster_node_compat)


def emit_event(settings: Settings, run_id: str, event_type: str, payload_json: str) -> int:
    from .event_intake import EVENT_TYPE_PATTERN

    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set: there is no relay to publish to")
    if not EVENT_TYPE_PATTERN.fullmatch(event_type):
        raise SettingsError("TYPE must be a short lowercase word (a-z, 0-9, _; at most 32 characters)")
    payload = parse_payload(payload_json)
    return publish_events(worker_publisher_for(settings), run_id, [(event_type, payload)])


# Events per transaction and Redis pipeline when ``sentri emit --ndjson`` publishes a file.
NDJSON_BATCH = 500


def emit_ndjson(settings: Settings, run_id: str, path: str) -> int:
    """``sentri emit RUN_ID --ndjson FILE``: every line checked first, then published in batches."""
    from .event_intake import EVENT_TYPE_PATTERN

    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set: there is no relay to publish to")
    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as handle:
                raw = handle.read()
    except OSError as error:
        raise SettingsError(f"--ndjson: cannot read {path} ({error.strerror or type(error).__name__})") from None
    events: List[Tuple[str, Dict[str, Any]]] = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        payload = parse_payload(line.decode("utf-8", "surrogateescape"), f"line {number}")
        event_type = payload.get("type")
        if not isinstance(event_type, str) or not EVENT_TYPE_PATTERN.fullmatch(event_type):
            raise SettingsError(f"line {number}: type must be a short lowercase word (a-z, 0-9, _; at most 32 "
                                "characters)")
        events.append((event_type, payload))
    if not events:
        raise SettingsError("--ndjson: no events to publish")
    return publish_events(worker_publisher_for(settings), run_id, events)


def publish_events(publisher: RunEventPublisher, run_id: str, events: List[Tuple[str, Dict[str, Any]]]) -> int:
    """Check every event, then publish them in batches (one transaction and pipeline each)."""
    import redis

    from .event_intake import InvalidEventError

    try:
        for number, (event_type, payload) in enumerate(events, 1):
            try:
                publisher.check(run_id, event_type, payload)
            except InvalidEventError as error:
                raise InvalidEventError(f"line {number}: {error}" if len(events) > 1 else str(error)) from None
        results: List[Tuple[Optional[str], int]] = []
        for start in range(0, len(events), NDJSON_BATCH):
            chunk = events[start:start + NDJSON_BATCH]
            results += publisher.publish_many([(run_id, event_type, payload) for event_type, payload in chunk])
    except InvalidEventError as error:
        print(f"sentri: {error}", file=sys.stderr)
        return 2
    except redis.RedisError as error:
        print(f"sentri: cannot publish to redis ({type(error).__name__})", file=sys.stderr)
        return 1
    finally:
        publisher.close()
    for (event_type, _), (event_id, listening) in zip(events, results):
        print(f"published {event_type} on run {run_id} as {event_id}; {listening} instance(s) listening")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(os.environ, args)
        configure_logging(settings.log_level, settings.log_json)
        if args.command == "serve":
            return serve(settings)
        if args.command == "demo":
            return demo(settings, args.step_s, args.runs)
        if args.command == "emit":
            if args.ndjson is not None:
                if args.event_type is not None or args.payload is not None:
                    raise SettingsError("--ndjson replaces TYPE and JSON: give one or the other")
                return emit_ndjson(settings, args.run_id, args.ndjson)
            if args.event_type is None:
                raise SettingsError("TYPE is required (or --ndjson FILE)")
            return emit_event(settings, args.run_id, args.event_type, args.payload or "{}")
        return token(settings, args.user, args.workspace, args.lifetime_s)
    except SettingsError as error:
        return fail(str(error))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
