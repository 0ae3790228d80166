"""Prometheus metrics: a ``HubObserver`` that counts, on a registry of its own.

Each application gets its own ``CollectorRegistry`` (tests build many apps in one process;
the global registry would refuse the second). The hub calls once per event, not per write,
so a fan-out to 10,000 listeners costs one counter update, not 10,000.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import sse
from .bus import Bus
from .hub import HubObserver
from .stream import CloseReason, EventStream

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Every reason a live stream can end with, pre-created so a scrape shows zeros, not gaps.
CLOSE_REASONS = (
    CloseReason.CLIENT_GONE,
    CloseReason.DONE,
    CloseReason.DRAINED,
    CloseReason.TOO_SLOW,
    CloseReason.TOO_OLD,
    CloseReason.REVOKED,
)

# Database lookups are a few milliseconds when healthy; the tail buckets catch a stalled pool.
LOOKUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def relay_reconnects(bus: Bus) -> int:
    """Connections made after the first: the RedisBus counts every connect; the local bus has none."""
    connects = getattr(bus, "connects", 0)
    return max(int(connects) - 1, 0)


class RelayCollector(Collector):
    """Asks the bus at scrape time, so the bus needs no metrics code of its own."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def collect(self) -> Iterator[GaugeMetricFamily]:
        connected = GaugeMetricFamily(
            "sentri_relay_connected", "1 when the Redis relay is connected (always 1 without REDIS_URL)."
        )
        connected.add_metric([], 1.0 if self.bus.connected else 0.0)
        yield connected
        reconnects = CounterMetricFamily(
            "sentri_relay_reconnects", "Times the Redis relay connection was re-established after a loss."
        )
        reconnects.add_metric([], float(relay_reconnects(self.bus)))
        yield reconnects  # type: ignore[misc]
        if getattr(self.bus, "slot_map", None) is not None:  # on a Redis Cluster only (docs/relay.md §9)
            shards = GaugeMetricFamily(
                "sentri_relay_shard_connected",
                "1 per cluster master whose sharded subscriber connection is up, by node (host:port).",
                labels=["node"],
            )
            for node, up in sorted(getattr(self.bus, "shard_connections", {}).items()):
                shards.add_metric([node], 1.0 if up else 0.0)
            yield shards


class Metrics(HubObserver):
    def __init__(self, bus: Bus) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.streams_open = Gauge("sentri_streams_open", "Streams open now.", registry=registry)
        self.streams_opened = Counter("sentri_streams_opened", "Streams that went live.", registry=registry)
        self.streams_closed = Counter(
            "sentri_streams_closed", "Streams that ended, by reason.", ["reason"], registry=registry
        )
        for reason in CLOSE_REASONS:
            self.streams_closed.labels(reason)
        self.events_emitted = Counter(
            "sentri_events_emitted", "Events emitted on this instance (before relay).", registry=registry
        )
        self.events_delivered = Counter(
            "sentri_events_delivered", "Event writes to local streams (one per event per listener).",
            registry=registry,
        )
        self.bytes_written = Counter(
            "sentri_stream_bytes_written",
            "SSE bytes of events and heartbeats handed to streams (before chunked framing).",
            registry=registry,
        )
        self.heartbeats = Counter("sentri_heartbeats", "Heartbeat comments sent.", registry=registry)
        self.accept_pauses = Counter(
            "sentri_accept_pauses", "Times accepting stopped for a moment: the process had no file descriptor left.",
            registry=registry,
        )
        self.resume_outcomes = Counter(
            "sentri_resume_outcomes", "Last-Event-ID resumes, by outcome.", ["outcome"], registry=registry
        )
        self.lookup_seconds = Histogram(
            "sentri_db_lookup_seconds", "Database calls run off the IOLoop, queueing included.",
            buckets=LOOKUP_BUCKETS, registry=registry,
        )
        registry.register(RelayCollector(bus))

    # -- HubObserver ------------------------------------------------------------------------

    def stream_opened(self, stream: EventStream) -> None:
        self.streams_opened.inc()
        self.streams_open.inc()

    def stream_closed(self, stream: EventStream) -> None:
        self.streams_open.dec()
        self.streams_closed.labels(stream.close_reason or CloseReason.CLIENT_GONE).inc()

    def event_emitted(self, run_id: str) -> None:
        self.events_emitted.inc()

    def event_delivered(self, run_id: str, listeners: int, nbytes: int) -> None:
        self.events_delivered.inc(listeners)
        self.bytes_written.inc(listeners * nbytes)

    def heartbeats_sent(self, count: int) -> None:
        self.heartbeats.inc(count)
        self.bytes_written.inc(count * len(sse.HEARTBEAT))

    def resume_outcome(self, kind: str) -> None:
        self.resume_outcomes.labels(kind).inc()

    # -- the rest ---------------------------------------------------------------------------

    def observe_lookup(self, seconds: float) -> None:
        self.lookup_seconds.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
