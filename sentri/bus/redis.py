"""The relay between instances through Redis pub/sub (docs/relay.md), compatible with Node instances.

One subscriber connection per process, subscribed to ``sentri:run:<runId>`` exactly while
the process has local listeners for that run, plus ``sentri:token:revoked``. The hub calls
``subscribe``/``unsubscribe``/``publish`` synchronously and never waits for Redis: changes
and outgoing messages are queued, and background tasks send them in batches (a wave of
thousands of new runs is a handful of ``SUBSCRIBE a b c ...`` commands, and a burst of
events one pipelined round trip).

The relay owns its reconnect loop rather than relying on redis-py's: whether a redis-py
pub/sub reader survives a Redis restart differs between 5.x, 6.x and 8.x, so every error
here ends the session (both connections), and a supervisor reconnects forever with capped,
jittered backoff, re-subscribing every run that still has local listeners. A connection
that stops answering is detected with PINGs. Plain (id-less) messages published while Redis
is unreachable are dropped and counted; events with ids are kept (below).

Event ids (issue 4, ``sentri.redis_history``): this project's events are published with one
Lua script that adds them to the run's Redis stream and publishes them, so their id is the
same on every instance. The publishing instance delivers its own events to its listeners
from their echo on the channel, like everyone else's: the channel's order is the id order,
so two publishers on one run never reach a listener out of order. Then:

- gap repair: after a reconnect, each run with local listeners is caught up from its stream
  (entries after the oldest id its listeners have), live messages for it held meanwhile; each
  listener drops frames whose id it already has, so none arrives twice;
- while Redis is unreachable, events published here are delivered to local listeners at once
  (without an id) and kept in the bounded outbox; on reconnect they are published in order,
  flagged ``|local``: their echo goes only to the streams that registered here since, and a
  repair skips them for the others.
  An event whose script call failed mid-flight is treated the same way; if Redis had run it
  before the connection broke, it is in history twice (at-least-once, the rare case).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any, Awaitable, Callable, Deque, Dict, List, NamedTuple, Optional, Set, Tuple
from urllib.parse import urlsplit

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .. import cancel_safe, jsontext, sse
from ..history import id_key
from ..redis_history import (
    DELIVERED_HERE,
    PUBLISH_SCRIPT,
    PublishCall,
    entries_of,
    released_pipeline,
    script_result,
    stream_key,
)
from ..redis_slots import ClusterDownError, SlotMap, address_of, node_url, probe, seed_urls
from ..stream import CloseReason, Frame
from . import Bus, Deliveries
from . import messages as wire
from .backoff import Backoff

log = logging.getLogger("sentri.relay")

SUBSCRIBE_BATCH = 1000  # channels per SUBSCRIBE/UNSUBSCRIBE command
PUBLISH_BATCH = 500  # messages per pipelined round trip
CONNECT_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 2.0


class RelayTimeoutError(Exception):
    """Redis stopped answering the subscriber connection's PINGs."""


# Gap repair for listeners without an id and nothing delivered here: from this long before the
# first of them registered (clocks of Redis and this host may differ by that much).
POSITIONLESS_MARGIN_S = 2.0
# Events a publisher stores before it publishes them (sentri.event_intake): in every snapshot read after.
DURABLE_PREFIXES = (b'{"type":"log"', b'{"type":"done"', b'{"type":"agent_event"')


class _Outgoing:
    """One message waiting for Redis: an event for the publish script, or a raw message."""

    __slots__ = ("run_id", "data", "ends_stream", "delivered_here", "delivered_at", "future", "raw", "echo_due",
                 "event_id")

    def __init__(self, run_id: str, data: bytes, ends_stream: bool = False, delivered_here: bool = False,
                 future: Optional[asyncio.Future[Optional[str]]] = None, raw: bool = False) -> None:
        self.run_id = run_id
        self.data = data  # the event's JSON, or the whole message when ``raw``
        self.ends_stream = ends_stream
        self.delivered_here = delivered_here
        self.delivered_at = time.monotonic()  # when delivered here (meaningful when delivered_here)
        self.future = future
        self.raw = raw
        # Published flagged ``|local`` on a subscribed channel: its echo is still to come back.
        self.echo_due = False
        self.event_id: Optional[str] = None  # Redis's answer: the id it was given

    def resolve(self, event_id: Optional[str]) -> None:
        self.event_id = event_id
        if self.future is not None and not self.future.done():
            self.future.set_result(event_id)


class _LateFrame(NamedTuple):
    """An outage event published at last, for the streams registered after ``delivered_at``."""

    frame: Frame
    delivered_at: float  # time.monotonic() when this instance delivered it without an id
    stored: bool  # a log, a done or an agent event: a snapshot read after it holds it


def describe_url(url: str) -> str:
    """Where Redis is, for log lines: host and port only (the URL may hold a password)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.hostname or '?'}:{port or 6379}"


def describe_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


class RedisBus(Bus):
    relays = True
    assigns_ids = True

    def __init__(
        self,
        redis_url: str,
        instance_id: str,
        retry_base_s: float = 0.05,
        retry_max_s: float = 10.0,
        ping_interval_s: float = 5.0,
        max_pending_bytes: int = 16 * 1024 * 1024,
        history_max_events: int = 1000,
        history_done_ttl_s: float = 600.0,
        history_idle_ttl_s: float = 86400.0,
        cluster_node_compat: bool = False,
    ) -> None:
        self.redis_url = redis_url
        self._seeds = seed_urls(redis_url)
        # On a cluster (docs/relay.md §9): the slot map of the current session, the script's
        # cluster arguments, and whether events also go out classic for Node instances.
        self.slot_map: Optional[SlotMap] = None
        self.cluster_node_compat = cluster_node_compat
        self._cluster_publish_call = PublishCall(instance_id, history_max_events, history_done_ttl_s,
                                                 history_idle_ttl_s, cluster=True, node_compat=cluster_node_compat)
        #: Shard subscriber connections up in the current cluster session, by node ("host:port").
        self.shard_connections: Dict[str, bool] = {}
        self.instance_id = instance_id
        self.backoff = Backoff(retry_base_s, max(retry_base_s, retry_max_s))
        self.ping_interval_s = ping_interval_s
        self.max_pending_bytes = max_pending_bytes
        self._origin_json = wire.origin_json(instance_id)
        self._delivered_here_origin = instance_id + "|" + DELIVERED_HERE
        self._publish_call = PublishCall(instance_id, history_max_events, history_done_ttl_s, history_idle_ttl_s)
        # Runs being caught up after a reconnect: their live frames wait here meanwhile.
        self._catching_up: Dict[str, List[Frame]] = {}
        # Live frames read in this loop turn, by run: delivered together at the turn's end, so a
        # listener gets every message one socket read brought in one write (``deliver_many``).
        self._arrived: Dict[str, List[Frame]] = {}
        self._arrived_delivery: Optional[asyncio.Handle] = None
        self._hub: Optional[Deliveries] = None
        self._where = describe_url(self._seeds[0] if self._seeds else redis_url)
        # Subscription state. ``_wanted``: runs with local listeners (the hub's view).
        # ``_sent``: channels SUBSCRIBEd on the current connection. ``_confirmed``: those Redis
        # acknowledged, the only ones a ``done`` is certain to reach us on.
        self._wanted: Set[str] = set()
        self._sent: Set[str] = set()
        self._confirmed: Set[str] = set()
        # SUBSCRIBE/UNSUBSCRIBE replies still due per channel: a channel is confirmed only by
        # the reply to the last command sent for it, not by an older one still in flight.
        self._replies_due: Dict[str, int] = {}
        self._waiters: Dict[str, List[asyncio.Future[bool]]] = {}
        # Runs a stream went on without waiting for Redis to confirm their channel (the wait
        # timed out): once confirmed, they are caught up from history like after a reconnect.
        self._unconfirmed: Set[str] = set()
        self._late_repairs: Set[str] = set()
        # Runs to repair from no later than this id, whatever their streams have: a stream went
        # on without its history read (``repair_unread_history``).
        self._repair_floors: Dict[str, str] = {}
        # Outage events published while their run was held, by run and id: those streams that
        # came after they were delivered here get them from the run's repair (``_repair``).
        self._late_frames: Dict[str, Dict[str, _LateFrame]] = {}
        # Outage events sent to Redis on a subscribed channel, by run in publish order, until
        # their echo comes back: the streams that came after them get them from the echo, in
        # the channel's order (``_on_outage_echo``).
        self._echoes_due: Dict[str, Deque[_Outgoing]] = {}
        self._subscriptions_changed: Optional[asyncio.Event] = None
        # Outgoing messages, bounded in bytes: a slow Redis makes them wait, never the loop.
        self._outbox: Deque[_Outgoing] = collections.deque()
        self._outbox_bytes = 0
        self._outbox_ready: Optional[asyncio.Event] = None
        self._connected = False
        self._state_changed: Optional[asyncio.Event] = None
        self._last_heard = 0.0
        self._supervisor: Optional[asyncio.Task[None]] = None
        self._closing = False
        self.attempts = 0
        self.connects = 0
        self.published = 0
        self.dropped = 0
        self.received = 0
        self.ignored = 0  # messages not delivered: not a run channel, not an event, own echo, too deep
        # Input nested deeper than any publisher of this project writes: a warning the first time.
        self._too_deep = jsontext.DeepInputLog(log, "a message from redis")
        self.caught_up = 0  # events delivered by gap repair after a reconnect
        #: Called with (jti, exp) for each revocation notice, before the streams are closed.
        self.revocation_callbacks: List[Callable[[str, Optional[float]], None]] = []

    # -- the interface the hub uses (synchronous, never waits for Redis) --------------------

    def attach(self, hub: Deliveries) -> None:
        self._hub = hub

    @property
    def connected(self) -> bool:
        return self._connected

    def subscribe(self, run_id: str) -> None:
        self._wanted.add(wire.run_channel(run_id))
        self._poke_subscriptions()

    def unsubscribe(self, run_id: str) -> None:
        channel = wire.run_channel(run_id)
        self._wanted.discard(channel)
        self._echoes_due.pop(run_id, None)  # no listener left here to get them
        self._poke_subscriptions()

    def publish(self, run_id: str, event_json: bytes) -> None:
        """A plain relay message without an id (a hub whose history assigns ids itself)."""
        if not self._connected or self._outbox_ready is None:
            self.dropped += 1
            return
        self._enqueue(_Outgoing(run_id, wire.with_origin(event_json, self._origin_json), raw=True))

    def publish_event(self, run_id: str, event_json: bytes, ends_stream: bool) -> asyncio.Future[Optional[str]]:
        future: asyncio.Future[Optional[str]] = asyncio.get_running_loop().create_future()
        if self._connected and self._outbox_ready is not None:
            # Delivered here from its echo, in the channel's order (the id order).
            self._enqueue(_Outgoing(run_id, event_json, ends_stream, future=future))
            return future
        # Redis away: local listeners get it now, without an id; Redis gets it on reconnect.
        future.set_result(None)
        self._deliver_here(run_id, event_json, ends_stream)
        self._enqueue(_Outgoing(run_id, event_json, ends_stream, delivered_here=True))
        return future

    def _enqueue(self, item: _Outgoing) -> None:
        if self._outbox_bytes + len(item.data) > self.max_pending_bytes:
            # Not relayed, not kept; but this instance's listeners still get it, without an id.
            if not item.raw:
                self._mark_delivered_here(item)
            self.dropped += 1
            return
        self._outbox.append(item)
        self._outbox_bytes += len(item.data)
        if self._outbox_ready is not None and self._connected:
            self._outbox_ready.set()

    def _deliver_here(self, run_id: str, event_json: bytes, ends_stream: bool) -> None:
        self._deliver_arrived()
        if self._hub is not None:
            self._hub.deliver(run_id, Frame(sse.data_frame(event_json), ends_stream=ends_stream))

    async def wait_subscribed(self, run_id: str, timeout_s: float) -> bool:
        """Wait until Redis confirmed the run's channel (docs/stream.md §3); False when down or late."""
        channel = wire.run_channel(run_id)
        if channel in self._confirmed:
            return True
        if channel not in self._wanted:
            return False
        if not self._connected:
            # A session already under way built its repair list before this stream came: once
            # Redis confirms the channel, catch it up as a late one (found by the soak: streams
            # connecting while their instance reconnected missed what was published meanwhile).
            self._unconfirmed.add(run_id)
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(future)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except asyncio.TimeoutError:
            # The caller goes on: what is published before Redis gets to the SUBSCRIBE would
            # reach it neither live nor by a reconnect's repair (found by the soak).
            self._unconfirmed.add(run_id)
            return False
        finally:
            waiters = self._waiters.get(channel)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[channel]

    def repair_unread_history(self, run_id: str, registered_at: float, client_through: Optional[str]) -> None:
        """Repair the run from the id its client resumed from or, for a new client, from shortly
        before the stream registered, once Redis confirms its channel (at once when it has): a
        stream whose history read failed (Redis busy or away) had, in its snapshot, only what
        was stored; an event published between its request and the subscription taking effect
        reached it neither way (found by the soak's start-up storm, where the history
        connections ran out)."""
        floor = client_through or _id_before(registered_at)
        current = self._repair_floors.get(run_id)
        if current is None or id_key(floor) < id_key(current):  # type: ignore[operator]
            self._repair_floors[run_id] = floor
        self._unconfirmed.add(run_id)
        if wire.run_channel(run_id) in self._confirmed:
            self._schedule_late_repair(run_id)

    async def wait_connected(self, timeout_s: float) -> bool:
        """Until the relay is connected (tests, start-up checks); False after the timeout."""
        deadline = time.monotonic() + timeout_s
        while not self._connected:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._state_changed is None:
                return False
            self._state_changed.clear()
            try:
                await asyncio.wait_for(self._state_changed.wait(), remaining)
            except asyncio.TimeoutError:
                return self._connected
        return True

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._supervisor is not None:
            return
        self._closing = False
        self._subscriptions_changed = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._supervisor = asyncio.ensure_future(self._supervise())

    async def close(self) -> None:
        self._closing = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            # Cancel until it takes: redis-py can swallow a CancelledError mid-command (connect,
            # subscribe), and an unbounded ``await supervisor`` then hangs shutdown for good.
            # Bounded by the session's own cleanup: its task waits, then three connection closes.
            give_up = time.monotonic() + 4 * CLOSE_TIMEOUT_S
            supervisor.cancel()
            await asyncio.wait([supervisor], timeout=0.05)
            while not supervisor.done() and time.monotonic() < give_up:
                supervisor.cancel()
                await asyncio.wait([supervisor], timeout=0.05)
            if supervisor.done() and not supervisor.cancelled():
                supervisor.exception()  # retrieved, so asyncio does not report it at exit
        self._set_disconnected()

    # -- the reconnect loop -------------------------------------------------------------------

    async def _supervise(self) -> None:
        failures = 0
        reported_down = False
        while not self._closing:
            self.attempts += 1
            error: BaseException
            try:
                await self._session()
                error = ConnectionError("session ended")  # pragma: no cover - sessions end by raising
            except asyncio.CancelledError:
                raise
            except Exception as session_error:  # any failure: drop everything, reconnect
                error = session_error
            was_connected = self._connected
            self._set_disconnected()
            if was_connected:
                failures = 0
                log.warning("relay lost redis at %s (%s); reconnecting", self._where, describe_error(error))
                reported_down = True
            elif not reported_down:
                log.warning("relay cannot reach redis at %s (%s); retrying", self._where, describe_error(error))
                reported_down = True
            delay = self.backoff.compute(failures)
            failures += 1
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        """One connection's life: subscribe, relay, until the first error (raised).

        Each session first asks Redis whether it is a cluster (``CLUSTER SLOTS``): a single
        Redis gets the session below, a cluster ``_cluster_session`` (docs/relay.md §9).
        """
        url, slot_map = await self._discover()
        if slot_map is not None:
            await self._cluster_session(slot_map)
            return
        self.slot_map = None
        await self._single_session(url)

    async def _cluster_session(self, slot_map: SlotMap) -> None:
        """A session on a Redis Cluster: ``sentri.bus.cluster.ClusterAwareRedisBus`` has one
        (that module depends on this one, not the other way round)."""
        raise ClusterDownError("REDIS_URL names a Redis Cluster; this bus relays on one Redis only")

    async def _discover(self) -> Tuple[str, Optional[SlotMap]]:
        """The first seed (or node learned before) that answers, and its slot map (None: not a cluster)."""
        known = self.slot_map.nodes if self.slot_map is not None else []
        urls = self._seeds + [node_url(self._seeds[0], node.host, node.port) for node in known
                              if node_url(self._seeds[0], node.host, node.port) not in self._seeds]
        last_error: BaseException = ConnectionError("REDIS_URL names no node")
        for url in urls:
            try:
                slot_map = await probe(url, CONNECT_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # that node is away: ask the next
                last_error = error
                continue
            if slot_map is not None and not slot_map.covered:
                last_error = ClusterDownError(f"{address_of(url)} knows no master for some slots")
                continue
            return url, slot_map
        raise last_error

    async def _single_session(self, url: str) -> None:
        retry = Retry(NoBackoff(), 0)  # errors come to us; the supervisor does the retrying
        subscriber = redis.asyncio.Redis.from_url(
            url, retry=retry, socket_connect_timeout=CONNECT_TIMEOUT_S, health_check_interval=0
        )
        publisher = redis.asyncio.Redis.from_url(
            url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=CONNECT_TIMEOUT_S,
            health_check_interval=0, max_connections=1,
        )
        pubsub = subscriber.pubsub()
        tasks: List[asyncio.Task[None]] = []
        changed, ready = self._subscriptions_changed, self._outbox_ready
        if changed is None or ready is None:
            raise RuntimeError("RedisBus.start() was not called")
        try:
            self._begin_session()
            await asyncio.wait_for(pubsub.subscribe(wire.TOKEN_REVOKED_CHANNEL), CONNECT_TIMEOUT_S)
            self._last_heard = time.monotonic()
            tasks = [
                asyncio.ensure_future(self._read(pubsub)),
                asyncio.ensure_future(self._sync_subscriptions(pubsub, changed)),
                asyncio.ensure_future(self._send_outbox(publisher, ready, publisher.register_script(PUBLISH_SCRIPT))),
                asyncio.ensure_future(self._keep_alive(pubsub)),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the session's error
            raise ConnectionError("relay task ended")  # pragma: no cover - the tasks loop forever
        finally:
            # close() cancels the supervisor again every 50 ms (redis-py can swallow a cancel);
            # a second cancel must not cut this cleanup short, or tasks and sockets outlive it.
            await cancel_safe.finish(self._end_session(tasks, pubsub, subscriber, publisher))  # bounded

    def _begin_session(self) -> None:
        """From now on, live frames for runs with listeners wait until their gap is repaired."""
        self._deliver_arrived()
        self._catching_up = {run_id: [] for run_id in (self._hub.runs if self._hub is not None else ())}
        self._unconfirmed.clear()  # the reconnect's repair covers every run with listeners
        self._late_repairs.clear()
        self._repair_floors = {run_id: floor for run_id, floor in self._repair_floors.items()
                               if run_id in self._catching_up}

    async def _end_session(self, tasks: List[asyncio.Task[None]], *closables: Any) -> None:
        """Cancel the session's tasks, then close its pub/sub objects and clients, in that order."""
        for task in tasks:
            task.cancel()
        if tasks:
            # redis-py can swallow a CancelledError inside a command (seen in unsubscribe):
            # the task then goes on to wait forever and a plain gather would hang shutdown.
            # A second cancel lands at our own await; the waits are bounded either way.
            give_up = time.monotonic() + CLOSE_TIMEOUT_S
            _, pending = await asyncio.wait(tasks, timeout=0.05)
            while pending and time.monotonic() < give_up:
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=0.05)
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: the session's error was already raised above
        await self._close_quietly(*(closable.aclose() for closable in closables))

    @staticmethod
    async def _close_quietly(*closings: Any) -> None:
        for closing in closings:
            # The connections are being thrown away after an error; a second error says nothing new.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closing, CLOSE_TIMEOUT_S)

    # -- session tasks ------------------------------------------------------------------------

    async def _read(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(timeout=None)
            self._last_heard = time.monotonic()
            if message is not None:
                self._on_message(message)

    async def _sync_subscriptions(self, pubsub: Any, changed: asyncio.Event) -> None:
        """Bring the server's subscriptions to ``_wanted``, in batches, whenever it changes."""
        while True:
            changed.clear()
            leaving = sorted(self._sent - self._wanted)
            joining = sorted(self._wanted - self._sent)
            for batch in _batches(leaving, SUBSCRIBE_BATCH):
                batch = self._still_leaving(batch)
                if batch:
                    self._sent.difference_update(batch)
                    # Not trusted from now on: a resubscribe must wait for its own confirmation.
                    self._confirmed.difference_update(batch)
                    self._expect_replies(batch)
                    await pubsub.unsubscribe(*batch)
            for batch in _batches(joining, SUBSCRIBE_BATCH):
                batch = self._still_joining(batch)
                if batch:
                    self._sent.update(batch)
                    self._expect_replies(batch)
                    await pubsub.subscribe(*batch)
            await changed.wait()  # at once when a change came in while the batches were sent

    # The lists of channels to leave and join are made before their batches are sent, and every
    # send yields to the loop: a stream may register meanwhile, find its run's channel still
    # confirmed and go live on it. Each batch is taken again as things stand now, or such a
    # channel would be unsubscribed under that stream and everything published until the next
    # round subscribes it again would miss it (found by the soak: four events lost by a stream
    # that came as its run's last listener on the instance left).

    def _still_leaving(self, channels: List[str]) -> List[str]:
        return [channel for channel in channels if channel in self._sent and channel not in self._wanted]

    def _still_joining(self, channels: List[str]) -> List[str]:
        return [channel for channel in channels if channel in self._wanted and channel not in self._sent]

    async def _send_outbox(self, publisher: Any, ready: asyncio.Event, script: Any) -> None:
        async def read_streams(starts: List[Tuple[str, str]]) -> List[Any]:
            async with released_pipeline(publisher, transaction=False) as pipe:
                for run_id, start in starts:
                    pipe.xrange(stream_key(run_id), "(" + start, "+")
                return list(await pipe.execute())

        await self._catch_up(read_streams)
        while True:
            await ready.wait()
            ready.clear()
            await self._repair_late(read_streams)
            while self._outbox:
                batch = [self._outbox.popleft() for _ in range(min(PUBLISH_BATCH, len(self._outbox)))]
                self._outbox_bytes -= sum(len(item.data) for item in batch)
                try:
                    # One connection, one pipeline: Redis runs the scripts in this order.
                    async with released_pipeline(publisher, transaction=False) as pipe:
                        for item in batch:
                            if item.raw:
                                pipe.publish(wire.run_channel(item.run_id), item.data)
                            else:
                                keys, args = self._publish_call(item.run_id, item.data, item.ends_stream,
                                                                item.delivered_here)
                                self._expect_echo(item)
                                await script(keys=keys, args=args, client=pipe)
                        # Errors as values: a script Redis refused (LOADING after a restart,
                        # WRONGTYPE) must not send back the ones it ran, which would be in
                        # history twice (found by the soak, bench/soak.py).
                        results = await pipe.execute(raise_on_error=False)
                except BaseException:
                    self._put_back(batch)
                    raise
                refused = [item for item, result in zip(batch, results) if isinstance(result, Exception)]
                self.published += len(batch) - len(refused)
                for item, result in zip(batch, results):
                    if not isinstance(result, Exception):
                        event_id = None if item.raw else script_result(result)[0]
                        item.resolve(event_id)
                        if item.delivered_here:
                            self._deliver_to_late_joiners(item, event_id)
                if refused:
                    self._put_back(refused)
                    raise next(result for result in results if isinstance(result, Exception))

    def _put_back(self, batch: List[_Outgoing]) -> None:
        """A batch Redis may not have run: its events go back first in line, delivered here now."""
        kept = []
        for item in batch:
            if item.raw:
                self.dropped += 1
                continue
            self._mark_delivered_here(item)
            kept.append(item)
        self._outbox.extendleft(reversed(kept))
        self._outbox_bytes += sum(len(item.data) for item in kept)

    def _mark_delivered_here(self, item: _Outgoing) -> None:
        if not item.delivered_here:
            item.delivered_here = True
            item.delivered_at = time.monotonic()
            item.resolve(None)
            self._deliver_here(item.run_id, item.data, item.ends_stream)

    def _deliver_to_late_joiners(self, item: _Outgoing, event_id: Optional[str]) -> None:
        """An outage event published at last (Redis answered its id): streams that registered
        here after it was delivered here (without an id) never had it, so they get it, with its
        id (found by the soak, bench/soak.py). A stored one (a log, a done, an agent event) not
        to those live on a snapshot: read after it was stored, their snapshot holds it.

        When: in the channel's order, from its echo (``_on_outage_echo``), when one is coming;
        now, when none is (the channel was not subscribed yet, so no message of the run has
        come since either)."""
        if event_id is None or self._hub is None:
            return
        if item.echo_due and item.run_id not in self._catching_up:
            if wire.run_channel(item.run_id) in self._confirmed:
                return  # its echo brings it, after every message published before it
            self._forget_echo(item)
        self._to_late_streams(item, event_id)

    def _to_late_streams(self, item: _Outgoing, event_id: str) -> None:
        """An outage event, now with its id, to the streams that came after it was delivered here."""
        late = _late_frame(item, event_id)
        if item.run_id in self._catching_up:
            # Its run waits for a repair, which reads this event back: they get it then, in id
            # order (a stream refuses an id older than the newest it has).
            self._late_frames.setdefault(item.run_id, {})[event_id] = late
            return
        self._deliver_arrived()  # what arrived before it first
        self._deliver_late(item.run_id, late)

    def _expect_echo(self, item: _Outgoing) -> None:
        """An outage event about to be published: on a subscribed channel its echo will come."""
        if item.delivered_here and not item.raw and wire.run_channel(item.run_id) in self._sent:
            item.echo_due = True
            self._echoes_due.setdefault(item.run_id, collections.deque()).append(item)

    def _forget_echo(self, item: _Outgoing) -> None:
        item.echo_due = False
        due = self._echoes_due.get(item.run_id)
        if due is not None and item in due:
            due.remove(item)
            if not due:
                del self._echoes_due[item.run_id]

    def _lose_echoes_due(self) -> None:
        """The connection is gone with the echoes still due: an outage event Redis answered goes
        to its late streams now (nothing published after it has come either); one it did not
        answer goes back to the outbox (``_put_back``) and out again."""
        echoes_due, self._echoes_due = self._echoes_due, {}
        for due in echoes_due.values():
            for item in due:
                item.echo_due = False
                if item.event_id is not None:
                    self._to_late_streams(item, item.event_id)

    def _on_outage_echo(self, run_id: str, relayed: wire.Relayed) -> None:
        """The echo of an outage event published here: the streams that came after it was
        delivered here get it now, after every message the channel brought before it and
        before every one after it. Taking it when Redis answered the publish instead (another
        socket) let a message published just after it reach them first, and they then refused
        it as older than what they had (found by the soak, at the end of every Redis pause)."""
        due = self._echoes_due.get(run_id)
        if not due or relayed.event_id is None:
            return  # not one this session published on a subscribed channel: its listeners had it
        # The run's echoes come back in the order its events went out: the first one waiting.
        # Its bytes are compared too, as a guard (an echo re-encoded, as one with a \u escape is,
        # differs in bytes only: then it is the first one all the same).
        item = next((waiting for waiting in due if waiting.data == relayed.event_json), due[0])
        while due[0] is not item:
            due.popleft().echo_due = False
        due.popleft()
        item.echo_due = False
        if not due:
            del self._echoes_due[run_id]
        self._to_late_streams(item, relayed.event_id)

    def _deliver_late(self, run_id: str, late: _LateFrame) -> None:
        if self._hub is not None:
            self._hub.deliver_to_joined_after(run_id, late.frame, late.delivered_at, stored=late.stored)

    async def _catch_up(self, read_streams: Callable[[List[Tuple[str, str]]], Awaitable[List[Any]]]) -> None:
        """Gap repair after a (re)connect: each run with listeners gets, from its stream, what
        was published after the oldest id its listeners have; live frames wait meanwhile."""
        if not await self.wait_connected(CONNECT_TIMEOUT_S):
            raise ConnectionError("not connected after subscribing")
        runs = list(self._catching_up)
        # Subscribed first, read second: nothing published in between is missed.
        await asyncio.gather(*(self.wait_subscribed(run_id, CONNECT_TIMEOUT_S) for run_id in runs))
        await self._repair_from_history(runs, read_streams)
        # What is still held belongs to runs Redis confirmed late meanwhile: released by their own
        # repair (``_repair_late``, next), never before it, or a stream would take their newer
        # live frames first and then refuse the older ones the repair brings (found by the soak).

    def _schedule_late_repair(self, run_id: Optional[str]) -> None:
        """A run's channel confirmed after a stream stopped waiting for it: hold its live frames
        and have the sender catch it up from history (``_repair_late``)."""
        if run_id is None or run_id not in self._unconfirmed:
            return
        self._unconfirmed.discard(run_id)
        self._deliver_arrived()
        self._catching_up.setdefault(run_id, [])
        self._late_repairs.add(run_id)
        if self._outbox_ready is not None:
            self._outbox_ready.set()

    async def _repair_late(self, read_streams: Callable[[List[Tuple[str, str]]], Awaitable[List[Any]]]) -> None:
        """Gap repair for runs whose channel Redis confirmed late (on the sender's connections)."""
        runs, self._late_repairs = sorted(self._late_repairs), set()
        for run_id in runs:
            self._catching_up.setdefault(run_id, [])  # a disconnect may have released it
        await self._repair_from_history(runs, read_streams)

    async def _repair_from_history(self, runs: List[str],
                                   read_streams: Callable[[List[Tuple[str, str]]], Awaitable[List[Any]]]) -> None:
        """Each run caught up from its stream, after the oldest id its listeners have; the
        reads go through ``read_streams`` (one Redis, or each run's master on a cluster)."""
        for batch in _batches(runs, PUBLISH_BATCH):
            starts = [(run_id, self._oldest_known_id(run_id)) for run_id in batch]
            answers = iter(await read_streams([(run_id, start) for run_id, start in starts if start is not None]))
            for run_id, start in starts:
                self._repair(run_id, next(answers) if start is not None else [])

    def _repair(self, run_id: str, rows: Any) -> None:
        self._deliver_arrived()
        held = self._catching_up.pop(run_id, None)
        late_frames = self._late_frames.pop(run_id, {})
        self._repair_floors.pop(run_id, None)
        if held is None or self._hub is None:
            return
        for entry, origin in entries_of(rows):
            if origin == self._delivered_here_origin:
                # Published late by this instance: its listeners had it at once, except those
                # that came after, if it was published while this run was held.
                late = late_frames.get(entry.event_id)
                if late is not None:
                    self._deliver_late(run_id, late)
                continue
            if jsontext.nests_deeper(entry.data):  # not written by a publisher of this project
                self._ignore_too_deep()
                continue
            self.caught_up += 1
            self._hub.deliver(run_id, Frame(sse.data_frame(entry.data, entry.event_id),
                                            ends_stream=entry.ends_stream, event_id=entry.event_id))
        for frame in held:
            self._hub.deliver(run_id, frame)

    def _oldest_known_id(self, run_id: str) -> Optional[str]:
        streams = self._hub.runs.get(run_id, ()) if self._hub else ()
        known = [(key, stream.last_event_id) for stream in streams
                 if stream.last_event_id and (key := id_key(stream.last_event_id)) is not None]
        positionless = [stream for stream in streams if not stream.last_event_id]
        if positionless and self._hub is not None:
            # A listener without an id (it went live on a snapshot read while history was
            # unreadable) has at least what was delivered here before: repair from there; with
            # nothing delivered here yet, from shortly before it registered (Redis ids start with
            # Redis's clock in ms): a done published meanwhile must still end it.
            newest = self._hub.newest_id(run_id)
            if newest is None:
                newest = _id_before(min(stream.opened_at for stream in positionless))
            known.append((id_key(newest), newest))  # type: ignore[arg-type]
        floor = self._repair_floors.get(run_id)
        if floor is not None:
            known.append((id_key(floor), floor))  # type: ignore[arg-type]
        return min(known)[1] if known else None

    def _release_held(self) -> None:
        self._deliver_arrived()
        catching_up, self._catching_up = self._catching_up, {}
        late_frames, self._late_frames = self._late_frames, {}
        for run_id, held in catching_up.items():
            for late in late_frames.get(run_id, {}).values():
                self._deliver_late(run_id, late)
            for frame in held:
                if self._hub is not None:
                    self._hub.deliver(run_id, frame)

    async def _keep_alive(self, pubsub: Any) -> None:
        """PING when the connection is quiet; no word for three intervals means it is gone."""
        while True:
            await asyncio.sleep(self.ping_interval_s)
            silent_s = time.monotonic() - self._last_heard
            if silent_s >= 3 * self.ping_interval_s:
                raise RelayTimeoutError(f"no reply from redis for {silent_s:.1f} s")
            if silent_s >= self.ping_interval_s:
                await pubsub.ping()

    # -- incoming -------------------------------------------------------------------------------

    def _on_message(self, message: Dict[str, Any]) -> None:
        kind = message.get("type")
        if isinstance(kind, bytes):
            kind = kind.decode()
        channel = _text(message.get("channel"))
        if kind == "message":
            self.received += 1
            if channel == wire.TOKEN_REVOKED_CHANNEL:
                self._on_token_revoked(message.get("data"))
            else:
                self._on_run_message(channel, message.get("data"))
        elif kind == "subscribe" and channel == wire.TOKEN_REVOKED_CHANNEL:
            self._set_connected()
        elif kind in ("subscribe", "unsubscribe") and channel is not None:
            due = self._replies_due.pop(channel, 0) - 1
            if due > 0:
                self._replies_due[channel] = due
            elif kind == "subscribe" and channel in self._sent:
                self._confirmed.add(channel)
                for future in self._waiters.pop(channel, []):
                    future.set_result(True)  # never done before: only this and a disconnect resolve it
                self._schedule_late_repair(wire.run_id_of(channel))

    def _expect_replies(self, channels: List[str]) -> None:
        for channel in channels:
            self._replies_due[channel] = self._replies_due.get(channel, 0) + 1

    def _ignore_too_deep(self) -> None:
        self.ignored += 1
        self._too_deep.ignored()

    def _on_run_message(self, channel: Optional[str], data: Any, classic_on_cluster: bool = False) -> None:
        run_id = wire.run_id_of(channel or "")
        try:
            relayed = wire.decode_relayed(data, self.instance_id) if isinstance(data, bytes) else None
        except jsontext.TooDeepError:
            self._ignore_too_deep()
            return
        if run_id is None or relayed is None or self._hub is None:
            self.ignored += 1  # not a run channel, not an event, or our own echo
            return
        if classic_on_cluster and relayed.event_id is not None:
            self.ignored += 1  # this project's event, published sharded too: delivered from there
            return
        if relayed.delivered_here:  # our own outage event: only the streams that came after it
            self.ignored += 1
            self._on_outage_echo(run_id, relayed)
            return
        frame = Frame(sse.data_frame(relayed.event_json, relayed.event_id), ends_stream=relayed.event_type == "done",
                      event_id=relayed.event_id)
        held = self._catching_up.get(run_id)
        if held is not None:
            held.append(frame)
            return
        arrived = self._arrived.get(run_id)
        if arrived is not None:
            arrived.append(frame)
            return
        self._arrived[run_id] = [frame]
        if self._arrived_delivery is None:
            self._arrived_delivery = asyncio.get_running_loop().call_soon(self._deliver_arrived)

    def _deliver_arrived(self) -> None:
        """Deliver the live frames read so far, in order; every other delivery path calls this first."""
        if self._arrived_delivery is not None:
            self._arrived_delivery.cancel()
            self._arrived_delivery = None
        arrived, self._arrived = self._arrived, {}
        if self._hub is None:
            return
        for run_id, frames in arrived.items():
            if len(frames) == 1:
                self._hub.deliver(run_id, frames[0])
            else:
                self._hub.deliver_many(run_id, frames)

    def _on_token_revoked(self, data: Any) -> None:
        try:
            notice = jsontext.loads(data)
        except jsontext.TooDeepError:
            self._ignore_too_deep()
            return
        except (TypeError, ValueError):  # not text, not JSON, not UTF-8
            notice = None
        jti = notice.get("jti") if isinstance(notice, dict) else None
        if not isinstance(jti, str) or not jti:
            self.ignored += 1
            return
        expires = notice.get("exp") if isinstance(notice, dict) else None
        for callback in self.revocation_callbacks:
            callback(jti, expires if isinstance(expires, (int, float)) else None)
        if self._hub is not None:
            closed = self._hub.close_where(lambda stream: stream.jti == jti, CloseReason.REVOKED)
            if closed:
                log.info("closed %d stream(s) of a revoked token", closed)

    # -- state ----------------------------------------------------------------------------------

    def _poke_subscriptions(self) -> None:
        if self._subscriptions_changed is not None:
            self._subscriptions_changed.set()

    def _set_connected(self) -> None:
        if self._connected:
            return
        self._connected = True
        self.connects += 1
        log.info("relay connected to redis at %s (%d run channel(s) to subscribe)", self._where, len(self._wanted))
        if self._state_changed is not None:
            self._state_changed.set()
        if self._outbox and self._outbox_ready is not None:  # events kept while Redis was away
            self._outbox_ready.set()

    def _set_disconnected(self) -> None:
        was_connected = self._connected
        self._connected = False
        self._sent.clear()
        self._confirmed.clear()
        self._replies_due.clear()
        self._lose_echoes_due()
        self._release_held()
        # Events stay in the outbox, for the next connection; their listeners here get them now.
        for item in list(self._outbox):
            if item.raw:
                self.dropped += 1
                self._outbox.remove(item)
                self._outbox_bytes -= len(item.data)
            else:
                self._mark_delivered_here(item)
        for waiters in self._waiters.values():
            for future in waiters:
                future.set_result(False)  # pending: a waiter leaves the list as soon as its wait ends
        self._waiters.clear()
        if was_connected and self._state_changed is not None:
            self._state_changed.set()


def _late_frame(item: _Outgoing, event_id: str) -> _LateFrame:
    return _LateFrame(Frame(sse.data_frame(item.data, event_id), event_id=event_id, ends_stream=item.ends_stream),
                      item.delivered_at, item.data.startswith(DURABLE_PREFIXES))


def _id_before(registered_at: float) -> str:
    """A Redis id from shortly before ``registered_at`` (``time.monotonic()``): Redis ids begin
    with Redis's clock in ms, so the margin allows for this host's clock being a little ahead."""
    registered_s = time.time() - (time.monotonic() - registered_at)
    return f"{int((registered_s - POSITIONLESS_MARGIN_S) * 1000)}-0"


def _text(value: Any) -> Optional[str]:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _batches(items: List[str], size: int) -> List[List[str]]:
    return [items[start:start + size] for start in range(0, len(items), size)]
