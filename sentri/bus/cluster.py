"""The relay's session on a Redis Cluster (docs/relay.md §9): sharded pub/sub, one connection per shard.

``RedisBus`` keeps everything that outlives a session (wanted channels, confirmations,
outbox, gap repair, delivery); a ``ClusterSession`` is one life of its connections on a
cluster, ended by the first error like the single-Redis session:

- one classic pub/sub connection (to a master chosen by the instance's id) for ``sentri:token:revoked``, which Node
  publishes classic (a classic message reaches every node), and, with
  SENTRI_REDIS_CLUSTER_NODE_COMPAT, for the run channels Node instances ``PUBLISH`` on;
- per master, one sharded subscriber connection (``SSUBSCRIBE``/``SUNSUBSCRIBE`` of the run
  channels in that master's slots, in batches) and one publisher connection (the publish
  scripts of runs in its slots, pipelined);
- a connection error, a ``MOVED``/``ASK``/``CLUSTERDOWN``/``TRYAGAIN`` answer, a
  ``sunsubscribe`` the server sends by itself (Redis 7 does when a slot leaves the node: a
  failover or a migration) or a ``cluster_state`` other than ``ok`` ends the session; the
  supervisor asks the cluster for its slot map again, subscribes every wanted run on its new
  owner and repairs the gap from the runs' streams (``RedisBus._catch_up``), live messages
  held meanwhile, so listeners miss nothing and get nothing twice;
- what a master sends after a silence (``VOUCH_AFTER_SILENCE_S``) is read only once another
  master says it still serves this instance's slots there: a master replaced while paused
  publishes, when it comes back, writes the cluster then throws away.

Ending every shard's session for one shard's trouble is deliberate: while a master is being
replaced the cluster refuses commands on every node anyway (``cluster_state:fail``), and one
recovery path is simpler to get right than one per shard.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Set, Tuple

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .. import cancel_safe
from ..redis_history import released_pipeline, script_result
from ..redis_router import is_stale_map_error
from ..redis_slots import (
    ClusterChangedError,
    ClusterDownError,
    Node,
    ReplicaConfirmations,
    SlotMap,
    cluster_keys,
    key_slot,
    node_url,
    other_master,
    slot_tags,
    still_owner,
)
from . import messages as wire
from .redis import CONNECT_TIMEOUT_S, PUBLISH_BATCH, SUBSCRIBE_BATCH, RedisBus, _batches, _Outgoing, _text

log = logging.getLogger("sentri.relay")

# The reply types of sharded pub/sub, as the relay's shared bookkeeping names their classic twins.
_SHARDED_TYPES = {"smessage": "message", "ssubscribe": "subscribe", "sunsubscribe": "unsubscribe"}


# A master that answered nothing for this long may have been replaced meanwhile (a failover takes
# at least the node timeout, seconds). Coming back, it runs the publishes that waited in its
# sockets and SPUBLISHes them before it learns it was replaced; the cluster then throws those
# writes away, so their ids are never in history and the new master hands them out again. So
# what it sends after such a silence is read only once another master says it still serves
# the slots of this instance's channels (docs/relay.md §9).
VOUCH_AFTER_SILENCE_S = 0.5
# A shard's subscriber connection that read nothing for this long is sent a PING (one at a time),
# so that a master's silence is measured also where its channels are quiet.
PROBE_INTERVAL_S = 0.2


def _same_slot_batches(channels: List[str], size: int) -> List[List[str]]:
    """``SSUBSCRIBE``/``SUNSUBSCRIBE`` take several channels only when they share one slot
    (else: CROSSSLOT): one command per slot, each at most ``size`` channels."""
    by_slot: Dict[int, List[str]] = {}
    for channel in channels:
        by_slot.setdefault(key_slot(channel), []).append(channel)
    return [batch for slot_channels in by_slot.values() for batch in _batches(slot_channels, size)]


class ClusterSession:
    def __init__(self, bus: RedisBus, slot_map: SlotMap) -> None:
        self.bus = bus
        self.slot_map = slot_map
        self._template = bus._seeds[0]
        self._subscribers: Dict[Node, Any] = {}  # node -> its sharded pub/sub
        self._publishers: Dict[Node, Any] = {}  # one connection each: scripts run in the order sent
        self._control: Dict[Node, Any] = {}  # CLUSTER INFO, beside the publishers' pipelines
        self._scripts: Dict[Node, Any] = {}
        self._clients: List[Any] = []
        self._classic: Any = None
        self._classic_sent: Set[str] = set()  # run channels subscribed classic (Node compatibility)
        self._last_heard: Dict[str, float] = {}
        self._pings: Dict[Node, Deque[float]] = {}  # when each unanswered PING went out, oldest first
        self._vouched_at: Dict[Node, float] = {}  # the silence before this was vouched for
        self._control_lock = asyncio.Lock()  # a control connection runs one command at a time
        self._confirmations = ReplicaConfirmations()

    def _client(self, node: Node, **options: Any) -> Any:
        client = redis.asyncio.Redis.from_url(
            node_url(self._template, node.host, node.port), retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=self._connect_timeout_s, health_check_interval=0, **options)
        self._clients.append(client)
        return client

    _connect_timeout_s = CONNECT_TIMEOUT_S

    async def run(self) -> None:
        bus = self.bus
        changed, ready = bus._subscriptions_changed, bus._outbox_ready
        if changed is None or ready is None:
            raise RuntimeError("RedisBus.start() was not called")
        # The counter keys' hash tags: computed once per process, off the event loop.
        await asyncio.get_running_loop().run_in_executor(None, slot_tags)
        bus.slot_map = self.slot_map
        masters = self.slot_map.masters
        tasks: List[asyncio.Task[None]] = []
        closables: List[Any] = []
        try:
            bus._begin_session()
            for node in masters:
                publisher = self._publishers[node] = self._client(node, max_connections=1)
                self._scripts[node] = publisher.register_script(bus._cluster_publish_call.script)
                # Its answers bound the watchdog's round (below): no longer than three ping intervals.
                self._control[node] = self._client(
                    node, max_connections=1, socket_timeout=min(self._connect_timeout_s, 3 * bus.ping_interval_s))
                subscriber = self._subscribers[node] = self._client(node).pubsub()
                self._pings[node] = deque()
                closables.append(subscriber)
            # A classic message reaches every node: instances spread their classic connection
            # (Node-compatibility subscriptions, revocation) over the masters by their id, rather
            # than all delivering from the first (measured by bench/cluster_pubsub.py).
            self._classic = self._client(masters[zlib.crc32(bus.instance_id.encode()) % len(masters)]).pubsub()
            closables.append(self._classic)
            closables.extend(self._clients)
            timeout_s = self._connect_timeout_s
            await self._check_state()  # bounded by the control connections' socket timeout
            for node, subscriber in self._subscribers.items():
                await subscriber.connect()  # bounded by the connect timeout
                self._last_heard[str(node)] = time.monotonic()
                bus.shard_connections[str(node)] = True
            bus._where = f"{masters[0]} (cluster: {len(masters)} masters)"
            await asyncio.wait_for(self._classic.subscribe(wire.TOKEN_REVOKED_CHANNEL), timeout_s)
            self._last_heard["classic"] = time.monotonic()
            tasks = [asyncio.ensure_future(self._read_classic())]
            tasks += [asyncio.ensure_future(self._read_shard(node, subscriber))
                      for node, subscriber in self._subscribers.items()]
            tasks += [
                asyncio.ensure_future(self._sync_subscriptions(changed)),
                asyncio.ensure_future(self._send_outbox(ready)),
                asyncio.ensure_future(self._keep_alive()),
                asyncio.ensure_future(self._probe_shards()),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the session's error
            raise ConnectionError("relay task ended")  # pragma: no cover - the tasks loop forever
        finally:
            bus.shard_connections.clear()
            await cancel_safe.finish(bus._end_session(tasks, *closables))  # as the single session's

    async def _check_state(self) -> None:
        """Every master says ``cluster_state:ok`` (a cluster with a failed slot is not served)."""
        for node in self._control:
            info = await self._ask(node, "CLUSTER", "INFO")
            text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                raise ClusterDownError(f"{node} says the cluster is not ok")

    async def _ask(self, node: Node, *command: Any) -> Any:
        async with self._control_lock:
            return await self._control[node].execute_command(*command)

    # -- reading --------------------------------------------------------------------------------

    async def _read_classic(self) -> None:
        bus = self.bus
        while True:
            message = await self._classic.get_message(timeout=None)
            self._last_heard["classic"] = time.monotonic()
            if message is None:
                continue
            channel = _text(message.get("channel"))
            if channel == wire.TOKEN_REVOKED_CHANNEL:
                bus._on_message(message)
            elif _text(message.get("type")) == "message":  # a run channel (Node compatibility)
                bus.received += 1
                bus._on_run_message(channel, message.get("data"), classic_on_cluster=True)

    async def _read_shard(self, node: Node, subscriber: Any) -> None:
        bus = self.bus
        pings = self._pings[node]
        while True:
            message = await subscriber.get_message(timeout=None)
            now = self._last_heard[str(node)] = time.monotonic()
            if message is None:
                continue
            if pings and now - pings[0] >= VOUCH_AFTER_SILENCE_S and pings[0] > self._vouched_at.get(node, 0.0):
                await self._vouch_for(node, now - pings[0])  # this message and what follows wait meanwhile
            kind = _SHARDED_TYPES.get(_text(message.get("type")) or "")
            if kind is None:
                if pings:  # a PING's pong
                    pings.popleft()
                continue
            channel = _text(message.get("channel"))
            if kind == "unsubscribe" and channel is not None and not bus._replies_due.get(channel):
                # Not an answer to us: the server dropped the channel because its slot left this node.
                raise ClusterChangedError(f"{node} no longer serves {channel} (failover or slot migration)")
            bus._on_message({**message, "type": kind})

    # -- subscriptions --------------------------------------------------------------------------

    def _owner(self, channel: str) -> Node:
        owner = self.slot_map.owner_of(channel)
        if owner is None or owner not in self._subscribers:
            raise ClusterDownError(f"no master serves the slot of {channel}")
        return owner

    def _by_owner(self, channels: List[str]) -> Dict[Node, List[str]]:
        groups: Dict[Node, List[str]] = {}
        for channel in channels:
            groups.setdefault(self._owner(channel), []).append(channel)
        return groups

    async def _sync_subscriptions(self, changed: asyncio.Event) -> None:
        """Each wanted run channel ``SSUBSCRIBE``d on its slot's master, in batches per shard."""
        bus = self.bus
        while True:
            changed.clear()
            leaving = sorted(bus._sent - bus._wanted)
            joining = sorted(bus._wanted - bus._sent)
            # Each batch as things stand when it is sent (RedisBus._still_leaving): one command per
            # slot, so many awaits, while streams come and go.
            for node, channels in self._by_owner(leaving).items():
                for batch in _same_slot_batches(channels, SUBSCRIBE_BATCH):
                    batch = bus._still_leaving(batch)
                    if batch:
                        bus._sent.difference_update(batch)
                        bus._confirmed.difference_update(batch)
                        bus._expect_replies(batch)
                        await self._subscribers[node].execute_command("SUNSUBSCRIBE", *batch)
            for node, channels in self._by_owner(joining).items():
                for batch in _same_slot_batches(channels, SUBSCRIBE_BATCH):
                    batch = bus._still_joining(batch)
                    if batch:
                        bus._sent.update(batch)
                        bus._expect_replies(batch)
                        await self._subscribers[node].execute_command("SSUBSCRIBE", *batch)
            if bus.cluster_node_compat:
                await self._sync_classic()
            await changed.wait()

    async def _sync_classic(self) -> None:
        """Node compatibility: the wanted run channels subscribed classic too, for Node's PUBLISHes."""
        leaving = sorted(self._classic_sent - self.bus._wanted)
        joining = sorted(self.bus._wanted - self._classic_sent)
        for batch in _batches(leaving, SUBSCRIBE_BATCH):
            self._classic_sent.difference_update(batch)
            await self._classic.unsubscribe(*batch)
        for batch in _batches(joining, SUBSCRIBE_BATCH):
            self._classic_sent.update(batch)
            await self._classic.subscribe(*batch)

    # -- publishing -----------------------------------------------------------------------------

    async def _read_streams(self, starts: List[Tuple[str, str]]) -> List[Any]:
        """Gap repair's reads: ``XRANGE`` of each run's stream after its start, on its master."""
        answers: List[Any] = [None] * len(starts)
        groups: Dict[Node, List[int]] = {}
        for position, (run_id, _) in enumerate(starts):
            groups.setdefault(self._owner(wire.run_channel(run_id)), []).append(position)
        for node, positions in groups.items():
            async with released_pipeline(self._publishers[node], transaction=False) as pipe:
                for position in positions:
                    run_id, start = starts[position]
                    pipe.xrange(cluster_keys(run_id).stream, "(" + start, "+")
                for position, rows in zip(positions, await pipe.execute()):
                    answers[position] = rows
        return answers

    async def _send_outbox(self, ready: asyncio.Event) -> None:
        bus = self.bus
        await bus._catch_up(self._read_streams)
        while True:
            await ready.wait()
            ready.clear()
            await bus._repair_late(self._read_streams)  # channels Redis confirmed late
            while bus._outbox:
                batch = [bus._outbox.popleft() for _ in range(min(PUBLISH_BATCH, len(bus._outbox)))]
                bus._outbox_bytes -= sum(len(item.data) for item in batch)
                await self._publish(batch)

    async def _publish(self, batch: List[_Outgoing]) -> None:
        """One pipeline per master, each in the batch's order (a run's events keep theirs).

        An item Redis answered is resolved; the first shard that failed puts its unanswered
        items and every later one back first in line (``RedisBus._put_back``) and ends the session.
        """
        bus = self.bus
        answered: Set[int] = set()
        try:
            groups: Dict[Node, List[int]] = {}
            for position, item in enumerate(batch):
                groups.setdefault(self._owner(wire.run_channel(item.run_id)), []).append(position)
            for node, positions in groups.items():
                results = await self._run_pipeline(node, [batch[position] for position in positions])
                failure: Optional[BaseException] = None
                for position, result in zip(positions, results):
                    if isinstance(result, Exception):
                        failure = failure or result
                        continue
                    answered.add(position)
                    item = batch[position]
                    bus.published += 1
                    event_id = None if item.raw else script_result(result)[0]
                    item.resolve(event_id)
                    if item.delivered_here:  # an outage event: to the streams that came meanwhile
                        bus._deliver_to_late_joiners(item, event_id)
                if failure is not None:
                    raise ClusterChangedError(f"{node} refused a publish ({str(failure)[:100]})") \
                        if is_stale_map_error(failure) else failure
        except BaseException:
            bus._put_back([item for position, item in enumerate(batch) if position not in answered])
            raise

    async def _run_pipeline(self, node: Node, items: List[_Outgoing]) -> List[Any]:
        bus = self.bus
        wait = self._confirmations.wait_command(self.slot_map, node)
        async with released_pipeline(self._publishers[node], transaction=False) as pipe:
            for item in items:
                if item.raw:
                    pipe.execute_command("SPUBLISH", wire.run_channel(item.run_id), item.data)
                else:
                    keys, args = bus._cluster_publish_call(item.run_id, item.data, item.ends_stream,
                                                           item.delivered_here)
                    bus._expect_echo(item)
                    await self._scripts[node](keys=keys, args=args, client=pipe)
            if wait is not None:  # a replica's confirmation (sentri.redis_slots.REPLICA_CONFIRM_TIMEOUT_MS)
                pipe.execute_command(*wait)
            # Errors come back in place (a shard that stopped owning a slot answers MOVED for
            # the scripts it did not run): the answered ones are not sent twice.
            answers = list(await pipe.execute(raise_on_error=False))
        if wait is not None:
            confirmed = answers.pop()
            if isinstance(confirmed, Exception) or int(confirmed) < 1:
                await self._confirm_owner(node, items)
        return answers

    async def _confirm_owner(self, node: Node, items: List[_Outgoing]) -> None:
        """No replica confirmed the publishes on ``node`` in time: unless another master says it
        still serves their slots, end the session with them unanswered, so they are put back and
        published again on the slot's new owner (``RedisBus._put_back``)."""
        other = other_master(self.slot_map, node)
        if other is None:
            return
        answer = await self._slots_as_seen_by(other)  # None: publish again rather than risk a loss
        slots = [key_slot(wire.run_channel(item.run_id)) for item in items]
        if not self._confirmations.answers_stand(node, slots, other, answer):
            raise ClusterChangedError(f"no replica of {node} confirmed a publish and it no longer serves the slot")

    async def _slots_as_seen_by(self, other: Node) -> Any:
        """``other``'s ``CLUSTER SLOTS`` answer; None when it gives none."""
        try:
            return await self._ask(other, "CLUSTER", "SLOTS")
        except Exception:
            return None

    async def _vouch_for(self, node: Node, silent_s: float) -> None:
        """``node`` answered nothing for ``silent_s`` (``VOUCH_AFTER_SILENCE_S``): unless another
        master says it still serves the slots of the channels subscribed there, end the session
        before anything more of it is read, so that no listener gets a message the cluster may
        throw away; the next session subscribes on the new owner and repairs from its history."""
        other = other_master(self.slot_map, node)
        asked_at = time.monotonic()
        slots = sorted({key_slot(channel) for channel in self.bus._sent if self.slot_map.owner_of(channel) == node})
        if other is None or not slots:
            self._vouched_at[node] = asked_at
            return
        answer = await self._slots_as_seen_by(other)
        if answer is None or not still_owner(node, slots, other, answer):
            raise ClusterChangedError(f"{node} answered nothing for {silent_s:.1f} s and {other} "
                                      f"{'did not answer' if answer is None else 'says it no longer serves its slots'}")
        log.info("relay: redis %s answered nothing for %.1f s; %s says it still serves its slots",
                 node, silent_s, other)
        self._vouched_at[node] = asked_at

    # -- liveness -------------------------------------------------------------------------------

    async def _keep_alive(self) -> None:
        """PING each quiet connection; three silent intervals mean it is gone. And the cluster's state."""
        bus = self.bus
        interval_s = bus.ping_interval_s
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            for name, heard in list(self._last_heard.items()):
                silent_s = now - heard
                if silent_s >= 3 * interval_s:
                    raise ConnectionError(f"no reply from redis {name} for {silent_s:.1f} s")
                if silent_s >= interval_s and name == "classic":  # the shards have their probes
                    await self._classic.execute_command("PING")
            await self._check_state()

    async def _probe_shards(self) -> None:
        """A PING to each shard's subscriber connection that read nothing for ``PROBE_INTERVAL_S``
        and has none unanswered: how long it stays unanswered is the master's silence."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            now = time.monotonic()
            for node, subscriber in self._subscribers.items():
                pings = self._pings[node]
                if not pings and now - self._last_heard[str(node)] >= PROBE_INTERVAL_S:
                    pings.append(now)
                    await subscriber.execute_command("PING")


class ClusterAwareRedisBus(RedisBus):
    """``RedisBus`` that also relays on a Redis Cluster: the one the application uses."""

    async def _cluster_session(self, slot_map: SlotMap) -> None:
        await ClusterSession(self, slot_map).run()


__all__ = ["ClusterAwareRedisBus", "ClusterChangedError", "ClusterSession"]
