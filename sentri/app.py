"""Composition root: builds the services from settings and the Tornado application on them."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any, List, Optional, Sequence, Tuple

import tornado.routing
import tornado.web
from tornado import httputil
from tornado.routing import Matcher

from handlers.base import NotFoundHandler
from handlers.events import default_handlers as event_handlers
from handlers.events_connect import EVENTS_PATH, RunEventsConnects
from handlers.health import default_handlers as health_handlers
from handlers.metrics import default_handlers as metrics_handlers
from handlers.page import default_handlers as page_handlers
from handlers.publish_api import PUBLISH_PATH, MethodAndPath
from handlers.publish_fast import PublishRoute

from .bus import Bus
from .config import Settings, SettingsError
from .context import Context
from .event_intake import Publisher
from .history import History, history_for
from .hub import Hub
from .logs import log_request
from .metrics import Metrics
from .observers import ObserverFanOut
from .revocation import make_revocations
from .signing import ArtifactSigner
from .store import Store, open_database
from .streamlog import StreamLogObserver


def new_instance_id() -> str:
    # Same shape as the Node seed's `inst_<ms>_<random>`; unique per process.
    return f"py_{os.getpid()}_{uuid.uuid4().hex[:12]}"


def make_bus(settings: Settings, instance_id: str) -> Bus:
    if not settings.redis_url:
        return Bus()
    from .bus.cluster import ClusterAwareRedisBus

    return ClusterAwareRedisBus(
        settings.redis_url,
        instance_id,
        retry_max_s=settings.relay_retry_max_s,
        ping_interval_s=settings.relay_ping_interval_s,
        max_pending_bytes=settings.relay_max_pending_bytes,
        history_max_events=settings.history_max_events,
        history_done_ttl_s=settings.history_done_ttl_s,
        history_idle_ttl_s=settings.history_idle_ttl_s,
        cluster_node_compat=settings.redis_cluster_node_compat,
    )


def make_history(settings: Settings, bus: Bus) -> History:
    """With Redis relaying (and assigning ids), the run streams; else the in-process ring."""
    if bus.assigns_ids and settings.redis_url:
        from .redis_history import RedisHistory

        return RedisHistory(settings.redis_url)
    return history_for(settings)


def build_context(settings: Settings, bus: Optional[Bus] = None) -> Context:
    """Every service the handlers use, wired together; raises SettingsError on bad settings."""
    if not settings.jwt_secret:
        raise SettingsError("JWT_SECRET is not set: the server cannot check tokens without it")
    # The server checkpoints SQLite's WAL beside its commits (sentri.wal_checkpoint), once started.
    database = open_database(settings.database_url, settings.data_dir, settings.db_workers,
                             checkpoint_in_commits=False)
    store = Store(database, ArtifactSigner(settings.artifact_signing_secret, settings.artifact_token_ttl_ms),
                  settings.db_workers)
    try:
        store.bind()
    except Exception as error:  # the first contact with the database: say what failed in one line
        store.close()
        # Driver messages can span lines (psycopg2 adds a hint line); the first says what failed.
        reason = (str(error).strip().splitlines() or [""])[0].strip()
        raise SettingsError(f"DATABASE_URL: cannot open the database ({type(error).__name__}: {reason})") from None
    instance_id = settings.instance_id or new_instance_id()
    bus = bus or make_bus(settings, instance_id)
    metrics = Metrics(bus)
    store.timing = metrics.observe_lookup
    hub = Hub(
        heartbeat_interval_s=settings.heartbeat_interval_s,
        max_listeners_per_run=settings.sse_max_listeners_per_run,
        max_writable_bytes=settings.sse_max_writable_bytes,
        bus=bus,
        observer=ObserverFanOut([metrics, StreamLogObserver()]),
        max_stream_age_s=settings.max_stream_age_s,
        history=make_history(settings, bus),
    )
    store.run_version = hub.run_version
    return Context(settings=settings, store=store, hub=hub, bus=bus, instance_id=instance_id, metrics=metrics,
                   publisher=Publisher(store, hub), revocations=make_revocations(settings, bus))


class Application(tornado.web.Application):
    """Tornado's ``Application`` that sends a run's events path straight to its delegate routes.

    A stream's GET and a publish's POST are most of the requests; Tornado's routing reaches
    them through its default, wildcard and rule routers, and that walk was 3 % of the IOLoop's
    time at a few thousand publishes a second (py-spy over ``bench/publish_cost.py``). The
    direct routes are matched first, with the same matchers, as the first rules would be.
    """

    def __init__(self, direct_routes: Sequence[Tuple[Matcher, tornado.routing.Router]],
                 handlers: List[Tuple[Any, ...]], **settings: Any) -> None:
        super().__init__(handlers, **settings)
        self.direct_routes = direct_routes

    def find_handler(  # type: ignore[override]  # Tornado annotates its own handler delegate
            self, request: httputil.HTTPServerRequest, **kwargs: Any) -> Optional[httputil.HTTPMessageDelegate]:
        for matcher, route in self.direct_routes:
            match = matcher.match(request)
            if match is not None:
                return route.find_handler(request, **match)
        return super().find_handler(request, **kwargs)


def make_app(context: Context) -> tornado.web.Application:
    connects = RunEventsConnects(context)
    publishes = PublishRoute(context)
    # A stream's GET and a publish's POST go to their own delegates, which hand what they do not
    # serve to the route's RequestHandlers (handlers/events_connect.py, handlers/publish_fast.py).
    application = Application(
        [(MethodAndPath("POST", PUBLISH_PATH), publishes), (MethodAndPath("GET", EVENTS_PATH), connects)],
        [(pattern, handler, {"context": context}) for pattern, handler in
         [*event_handlers, *health_handlers, *metrics_handlers, *page_handlers]],
        default_handler_class=NotFoundHandler,
        default_handler_args={"context": context},
        log_function=log_request,
        serve_traceback=False,
        compress_response=False,
    )
    connects.application = application
    publishes.application = application
    return application


async def start(context: Context) -> None:
    """Start the timers and the relay; call on the IOLoop that will serve."""
    context.hub.start()
    context.memory_trimmer.start()
    context.store.checkpointer.start()
    await context.bus.start()
    # Bounded by their own timeouts, and never failing: Redis may be away at start.
    await asyncio.gather(context.revocations.warm_up(), context.hub.history.warm_up())


async def stop(context: Context) -> None:
    context.hub.stop()
    context.memory_trimmer.stop()
    context.store.checkpointer.stop()
    await context.bus.close()
    await context.hub.history.close()
    await context.revocations.close()
    context.store.close()
