"""Publishing run events from worker processes: no server, only ``REDIS_URL``.

``emit(run_id, type, payload)`` publishes through the same Lua script as the server
(``sentri.redis_history``): the event is added to the run's Redis stream (its id, kept for
resume and gap repair) and the relay message of docs/relay.md §2 (the event's JSON with
``"_origin":"<worker>|<id>"`` last) goes out on ``sentri:run:<runId>``, so every Python and
Node instance with listeners for the run delivers it. Synchronous (a worker is usually not
an event loop).

Durable logs: given a database (``DATABASE_URL``; ``sentri emit`` passes it when set), a
``log`` is checked, stamped and appended to ``run_logs``, an ``agent_event`` checked and
stored in ``run_agent_events`` (where that table exists) and a ``done`` recorded on the run
row before the event is published, as the server's publishers do (``sentri.event_intake``).
Without one, the worker publishes only: the event is live and in Redis history, but a
snapshot read later does not contain it (the producer stores it itself, as Node producers do).

Batching: ``publish_many`` stores a list of events in one transaction and sends their scripts
in one Redis pipeline (one round trip). With ``batch_window_s`` > 0, ``emit`` checks the event
at once (raising as ``publish`` does) but only queues it; the queue is sent by ``publish_many``
when it holds ``batch_max_events`` events, when the window has passed since its first event,
on ``flush()``, on ``close()`` and at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import threading
import uuid
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import peewee
import redis

from .bus import messages as wire
from .config import SETTINGS_BY_NAME, SettingsError
from .redis_history import PublishCall, script_result
from .redis_router import SyncRedisRouter
from .redis_slots import Node, ReplicaConfirmations, UnconfirmedPublishError, key_slot, other_master

if TYPE_CHECKING:
    from .event_intake import PreparedEvent


# An event checked for publishing: its run and its published form (sentri.event_intake).
_Checked = Tuple[str, "PreparedEvent"]


def new_origin() -> str:
    return f"worker_{os.getpid()}_{uuid.uuid4().hex[:12]}"


def _setting_default(name: str) -> Any:
    return SETTINGS_BY_NAME[name].default


class RunEventPublisher:
    def __init__(self, redis_url: str, origin: Optional[str] = None, timeout_s: float = 5.0,
                 database_url: str = "",
                 history_max_events: int = _setting_default("SENTRI_HISTORY_MAX_EVENTS"),
                 history_done_ttl_s: float = _setting_default("SENTRI_HISTORY_DONE_TTL_S"),
                 history_idle_ttl_s: float = _setting_default("SENTRI_HISTORY_IDLE_TTL_S"),
                 batch_window_s: float = 0.0, batch_max_events: int = 100,
                 cluster_node_compat: bool = _setting_default("SENTRI_REDIS_CLUSTER_NODE_COMPAT")) -> None:
        if not redis_url:
            raise ValueError("REDIS_URL is not set: there is no relay to publish to")
        self.origin = origin or new_origin()
        self._origin_json = wire.origin_json(self.origin)
        # One Redis, or on a cluster each run's slot master (asked on first publish).
        self._router = SyncRedisRouter(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._history_settings = (history_max_events, history_done_ttl_s, history_idle_ttl_s)
        # On a Redis Cluster shared with Node instances: events also go out classic, as the
        # server's own do (SENTRI_REDIS_CLUSTER_NODE_COMPAT, docs/relay.md §9), or Node's
        # clients would never see what workers publish.
        self.cluster_node_compat = cluster_node_compat
        self._call = PublishCall(self.origin, *self._history_settings)
        self._confirmations = ReplicaConfirmations()  # on a cluster (sentri.redis_slots)
        self._database: Optional[peewee.Database] = None
        self._models_were_bound_to: Optional[peewee.Database] = None
        self._has_agent_events = False
        self.batch_window_s = batch_window_s
        self.batch_max_events = max(1, batch_max_events)
        self._queue: List[_Checked] = []
        self._queue_lock = threading.Lock()
        # Held while a batch is sent: two flushes never interleave, so events keep their order.
        self._send_lock = threading.Lock()
        self._timer: Optional[threading.Timer] = None
        self._closed = False
        if batch_window_s > 0:
            atexit.register(self.flush)  # a worker that exits without close() still sends its tail
        if database_url:
            from .models import AGENT_EVENTS_TABLE, database_proxy
            from .store import ensure_schema, open_database

            self._database = open_database(database_url, ".", 1)
            # The models are bound through one proxy: given back on close() (a publisher inside
            # another program, a test's server, must not keep the models on its database).
            self._models_were_bound_to = database_proxy.obj
            database_proxy.initialize(self._database)
            try:
                ensure_schema(self._database)
                with self._database.connection_context():
                    self._has_agent_events = AGENT_EVENTS_TABLE in self._database.get_tables()
            except peewee.DatabaseError as error:  # one line, as the server says it (sentri.app)
                self.close()
                reason = (str(error).strip().splitlines() or [""])[0].strip()
                raise SettingsError(f"DATABASE_URL: cannot open the database ({type(error).__name__}: {reason})") \
                    from None

    def message(self, event_type: str, payload: Optional[Mapping[str, Any]] = None) -> bytes:
        """The message as a plain (id-less) publisher writes it; the script adds the id."""
        return wire.with_origin(wire.encode_event(event_type, dict(payload or {})), self._origin_json)

    def emit(self, run_id: str, event_type: str, payload: Optional[Mapping[str, Any]] = None) -> int:
        """Publish one event; returns how many instances (subscribers) received it.

        Batching (``batch_window_s`` > 0): the event is checked, queued, and 0 is returned.
        """
        if self.batch_window_s <= 0:
            return self.publish(run_id, event_type, payload)[1]
        checked = self.check(run_id, event_type, payload)
        with self._queue_lock:
            if self._closed:
                raise RuntimeError("this publisher is closed")
            self._queue.append(checked)
            full = len(self._queue) >= self.batch_max_events
            if not full and self._timer is None:
                self._timer = threading.Timer(self.batch_window_s, self.flush)
                self._timer.daemon = True
                self._timer.start()
        if full:
            self.flush()
        return 0

    def flush(self) -> None:
        """Send what ``emit`` queued (batching), in one transaction and one Redis round trip."""
        with self._send_lock:
            with self._queue_lock:
                queued, self._queue = self._queue, []
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            if queued:
                self._send(queued)

    def publish(self, run_id: str, event_type: str,
                payload: Optional[Mapping[str, Any]] = None) -> Tuple[Optional[str], int]:
        """Store (with a database), then publish one event; returns (its id, receivers).

        Raises ``sentri.event_intake.InvalidEventError`` for an event a database would refuse,
        and for one nested deeper than the instances read (with or without a database).
        """
        return self.publish_many([(run_id, event_type, payload)])[0]

    def publish_many(self, events: Sequence[Tuple[str, str, Optional[Mapping[str, Any]]]]
                     ) -> List[Tuple[Optional[str], int]]:
        """Publish ``(run_id, type, payload)`` events in order: all checked first (one bad
        event raises and nothing is stored or sent), stored in one transaction, then sent in
        one Redis pipeline. Returns each event's (id, receivers)."""
        checked = [self.check(run_id, event_type, payload) for run_id, event_type, payload in events]
        with self._send_lock:
            return self._send(checked)

    def check(self, run_id: str, event_type: str, payload: Optional[Mapping[str, Any]]) -> _Checked:
        """An event in its published form (raises ``InvalidEventError``); nothing is sent."""
        from .event_intake import PreparedEvent, check_depth, prepare

        body: Dict[str, Any] = dict(payload or {})
        check_depth(body)
        if self._database is None:
            return run_id, PreparedEvent(event_type, body, None)
        return run_id, PreparedEvent(event_type, *prepare(event_type, body))

    def _send(self, events: Sequence[_Checked]) -> List[Tuple[Optional[str], int]]:
        from .writes import commit_writes

        if self._database is not None:
            writes = [write for write in (event.write(run_id) for run_id, event in events) if write is not None]
            if writes:
                with self._database.connection_context():
                    commit_writes(writes, self._has_agent_events)
        try:
            return self._publish(events)
        except redis.RedisError:
            self._router.stale()  # on a cluster: the slot map is asked again before the next publish
            raise

    def _publish(self, events: Sequence[_Checked]) -> List[Tuple[Optional[str], int]]:
        """The scripts in one pipeline per Redis (on a cluster: per master, each in input order).

        Raises ``redis.RedisError`` when Redis is unreachable or a shard refused (a failover
        or a slot moving), and ``UnconfirmedPublishError`` when no replica confirmed and the
        master no longer serves the slot (docs/relay.md §9): then some events may have been
        published and others not; the caller may publish again (a retried event can be in
        history twice, never lost).
        """
        self._router.ensure_known()
        cluster = bool(self._router.is_cluster)
        if cluster != self._call.cluster:
            self._call = PublishCall(self.origin, *self._history_settings, cluster=cluster,
                                     node_compat=self.cluster_node_compat)
        groups: Dict[Optional[Node], List[int]] = {}
        for position, (run_id, _) in enumerate(events):
            groups.setdefault(self._router.owner_of(wire.run_channel(run_id)), []).append(position)
        results: List[Tuple[Optional[str], int]] = [(None, 0)] * len(events)
        for node, positions in groups.items():
            client = self._router.client_at(node)
            script = client.register_script(self._call.script)
            pipeline = client.pipeline(transaction=False)
            for position in positions:
                run_id, event = events[position]
                keys, args = self._call(run_id, wire.encode_event(event.event_type, event.body),
                                        event.event_type == "done")
                script(keys=keys, args=args, client=pipeline)
            wait = self._confirmations.wait_command(self._router.slot_map, node)
            if wait is not None:
                pipeline.execute_command(*wait)
            answers = pipeline.execute()
            if wait is not None and int(answers.pop()) < 1 and node is not None:
                self._confirm_owner(node, [key_slot(wire.run_channel(events[p][0])) for p in positions])
            for position, result in zip(positions, answers):
                results[position] = script_result(result)
        return results

    def _confirm_owner(self, node: Node, slots: List[int]) -> None:
        """No replica confirmed the publishes on ``node`` in time: raise ``UnconfirmedPublishError``
        unless another master says ``node`` still serves their slots (``sentri.redis_slots``)."""
        slot_map = self._router.slot_map
        other = other_master(slot_map, node) if slot_map is not None else None
        if other is None:
            return
        try:
            answer = self._router.client_at(other).execute_command("CLUSTER", "SLOTS")
        except redis.RedisError:
            answer = None
        if not self._confirmations.answers_stand(node, slots, other, answer):
            raise UnconfirmedPublishError(f"no replica of {node} confirmed the publish and it no longer serves the "
                                          f"run's slot: publish again")

    def close(self) -> None:
        """Send what is queued, then let go of Redis and the database."""
        try:
            self.flush()
        finally:
            with self._queue_lock:
                self._closed = True
            atexit.unregister(self.flush)
            self._router.close()
        if self._database is not None:
            from .models import database_proxy
            from .store import close_pool

            if database_proxy.obj is self._database:
                database_proxy.initialize(self._models_were_bound_to)
            close_pool(self._database)


_default: Optional[RunEventPublisher] = None
_default_lock = threading.Lock()


def emit(run_id: str, event_type: str, payload: Optional[Dict[str, Any]] = None) -> int:
    """Publish with a process-wide publisher on ``REDIS_URL`` (created on first use), with
    ``SENTRI_REDIS_CLUSTER_NODE_COMPAT`` read from the environment as the server reads it."""
    global _default
    with _default_lock:
        if _default is None:
            compat = SETTINGS_BY_NAME["SENTRI_REDIS_CLUSTER_NODE_COMPAT"]
            _default = RunEventPublisher(os.environ.get("REDIS_URL", ""),
                                         cluster_node_compat=compat.parse(os.environ.get(compat.name, "")))
        publisher = _default
    return publisher.emit(run_id, event_type, payload)
