"""Event ids and history with Redis: a stream per run, written and relayed in one atomic step.

Every publisher of this project (the server's hub, the HTTP API through it, the worker
publisher and ``sentri emit``) publishes an event with ``PUBLISH_SCRIPT``, one Lua script
run by Redis as a single step:

1. ``XADD sentri:events:<runId> MAXLEN ~ <SENTRI_HISTORY_MAX_EVENTS>`` with the id
   ``<Redis time in ms>-<sentri:events:seq>``: the second part is one counter shared by every
   run, so an id is never found in another run's stream (an id from another run means a
   snapshot, never that run's events), and the time part keeps ids increasing after a Redis
   that lost its data (a counter starting again at 1) comes back;
2. ``PUBLISH sentri:run:<runId>`` the relay message (docs/relay.md §2-§3), with the id carried in
   ``"_origin":"<instance>|<id>"``: Node instances only compare ``_origin`` for equality and
   strip it, so their clients' bytes are unchanged;
3. ``PEXPIRE`` the stream: SENTRI_HISTORY_DONE_TTL_S after a ``done``, else
   SENTRI_HISTORY_IDLE_TTL_S after the last event.

Because it is one step, two publishers on one run cannot publish ids out of order: the order
of the ids is the order of the messages on the channel.

``RedisHistory`` answers the resume path (``sentri.resume``) from those streams, exactly as
the in-process ring does. Events relayed from Node instances have no id and are not kept.
SENTRI_HISTORY_MAX_BYTES and SENTRI_HISTORY_MAX_RUNS bound the in-process ring only: in Redis
a run's history is bounded by its count and expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence, Tuple

from . import jsontext
from .bus import messages as wire
from .history import Entry, History, Replay

STREAM_PREFIX = "sentri:events:"
SEQUENCE_KEY = "sentri:events:seq"
DELIVERED_HERE = wire.DELIVERED_HERE
split_origin = wire.split_origin
HISTORY_TIMEOUT_S = 1.0

log = logging.getLogger("sentri.history")

PUBLISH_SCRIPT = """
local now = redis.call('TIME')
local seq = redis.call('INCR', KEYS[3])
local id = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000)) .. '-' .. seq
local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], id, 'd', ARGV[1], 'o', ARGV[7], 'e', ARGV[5])
if type(added) == 'table' and added.err then
  -- Redis's clock went back below the stream's last id: keep the stream's order instead.
  added = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'd', ARGV[1], 'o', ARGV[7], 'e', ARGV[5])
end
local receivers = redis.call('PUBLISH', KEYS[2], string.sub(ARGV[1], 1, -2) .. ARGV[2] .. added .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {added, receivers}
"""


# On a Redis Cluster (docs/relay.md §9): every key in the slot of the run's channel, one id
# counter per slot (an id's sequence is ``counter * 16384 + slot``, so ids stay unique across
# runs), the message sharded (``SPUBLISH``, delivered on the slot's shard only) and, with
# SENTRI_REDIS_CLUSTER_NODE_COMPAT, also classic (``PUBLISH``, broadcast to every node) for
# Node instances, which subscribe classic. ARGV[8] = the slot, ARGV[9] = "1" for both.
CLUSTER_PUBLISH_SCRIPT = """
local now = redis.call('TIME')
local seq = string.format('%.0f', redis.call('INCR', KEYS[3]) * 16384 + tonumber(ARGV[8]))
local id = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000)) .. '-' .. seq
local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], id, 'd', ARGV[1], 'o', ARGV[7], 'e', ARGV[5])
if type(added) == 'table' and added.err then
  added = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'd', ARGV[1], 'o', ARGV[7], 'e', ARGV[5])
end
local message = string.sub(ARGV[1], 1, -2) .. ARGV[2] .. added .. ARGV[3]
local receivers = redis.call('SPUBLISH', KEYS[2], message)
if ARGV[9] == '1' then
  receivers = receivers + redis.call('PUBLISH', KEYS[2], message)
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {added, receivers}
"""


def stream_key(run_id: str) -> str:
    return STREAM_PREFIX + run_id


def history_key(run_id: str, cluster: bool) -> str:
    """The run's stream: ``sentri:events:<runId>``, or its cluster name (``sentri.redis_slots``)."""
    if cluster:
        from .redis_slots import cluster_keys

        return cluster_keys(run_id).stream
    return stream_key(run_id)


class PublishCall:
    """The keys and arguments of ``PUBLISH_SCRIPT`` for one event (pure: no Redis here)."""

    def __init__(self, instance_id: str, max_events: int, done_ttl_s: float, idle_ttl_s: float,
                 cluster: bool = False, node_compat: bool = False) -> None:
        self.instance_id = instance_id
        # On a cluster: ``CLUSTER_PUBLISH_SCRIPT``'s keys and its two more arguments.
        self.cluster = cluster
        self.node_compat = node_compat
        self.max_events = max_events
        self.done_ttl_ms = max(1, int(done_ttl_s * 1000))
        self.idle_ttl_ms = max(1, int(idle_ttl_s * 1000))
        # ``,"_origin":"<instance>|`` as JSON text: the script appends ``<id>"}``.
        self._origin_head = b',"' + wire.ORIGIN_KEY.encode() + b'":' + wire.origin_json(instance_id)[:-1] + b"|"

    def __call__(self, run_id: str, event_json: bytes, ends_stream: bool,
                 delivered_here: bool = False) -> Tuple[List[str], List[Any]]:
        tail = (b"|" + DELIVERED_HERE.encode() if delivered_here else b"") + b'"}'
        origin = self.instance_id + ("|" + DELIVERED_HERE if delivered_here else "")
        args: List[Any] = [event_json, self._origin_head, tail, self.max_events, "1" if ends_stream else "0",
                           self.done_ttl_ms if ends_stream else self.idle_ttl_ms, origin]
        if self.cluster:
            from .redis_slots import cluster_keys

            names = cluster_keys(run_id)
            args += [names.slot, "1" if self.node_compat else "0"]
            return [names.stream, names.channel, names.sequence], args
        return [stream_key(run_id), wire.run_channel(run_id), SEQUENCE_KEY], args

    @property
    def script(self) -> str:
        return CLUSTER_PUBLISH_SCRIPT if self.cluster else PUBLISH_SCRIPT


def script_result(result: Any) -> Tuple[Optional[str], int]:
    """``PUBLISH_SCRIPT``'s answer: (the event's id, how many subscribers received it)."""
    if not isinstance(result, (list, tuple)) or len(result) != 2:
        return None, 0
    event_id, receivers = result
    return (event_id.decode() if isinstance(event_id, bytes) else str(event_id)), int(receivers)


def entry_of(event_id: Any, fields: Dict[Any, Any]) -> Tuple[Entry, str]:
    """A stream entry as a history ``Entry`` plus the origin that wrote it."""
    text_id = event_id.decode() if isinstance(event_id, bytes) else str(event_id)
    origin = fields.get(b"o", b"")
    return (Entry(text_id, bytes(fields.get(b"d", b"")), fields.get(b"e") == b"1"),
            origin.decode("utf-8", "replace") if isinstance(origin, bytes) else str(origin))


def entries_of(rows: Optional[Sequence[Any]]) -> List[Tuple[Entry, str]]:
    return [entry_of(event_id, fields or {}) for event_id, fields in rows or ()]


@contextlib.asynccontextmanager
async def released_pipeline(client: Any, transaction: bool) -> AsyncIterator[Any]:
    """A pipeline that gives its connection back to the pool on every exit.

    redis-py's ``Pipeline.execute`` takes a connection for ``SCRIPT EXISTS`` (``load_scripts``,
    when the pipeline holds scripts) before its own ``try``/``finally``: an error or a cancel
    there (Redis unreachable, the relay's session ending) leaves the pipeline holding the
    connection until the garbage collector finds it ("Unclosed client session"). The reset is
    shielded so that a second cancel cannot cut it short either.
    """
    pipe = client.pipeline(transaction=transaction)
    try:
        yield pipe
    finally:
        await asyncio.shield(pipe.reset())


class RedisHistory(History):
    """History read from the run streams; ids are assigned by the script, not here."""

    assigns_here = False

    def __init__(self, redis_url: str, timeout_s: float = HISTORY_TIMEOUT_S) -> None:
        from .redis_router import RedisRouter

        # One Redis, or on a cluster the master of each run's slot (sentri.redis_router).
        self._router = RedisRouter(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._timeout_s = timeout_s
        # Entries nested deeper than any publisher of this project writes are not replayed.
        self.too_deep = jsontext.DeepInputLog(log, "a history entry from redis")

    async def warm_up(self) -> None:
        await self._router.learn(self._timeout_s)

    async def _key(self, run_id: str) -> str:
        await self._router.client_for(wire.run_channel(run_id))  # learns whether it is a cluster
        return history_key(run_id, bool(self._router.is_cluster))

    async def _newest(self, run_id: str) -> Optional[Entry]:
        async def newest(client: Any) -> Any:
            return await client.xrevrange(await self._key(run_id), "+", "-", count=1)

        rows = await self._router.call(wire.run_channel(run_id), newest)
        return entries_of(rows)[0][0] if rows else None

    async def last_id(self, run_id: str) -> Optional[str]:
        newest = await self._newest(run_id)
        return newest.event_id if newest is not None else None

    async def done_id(self, run_id: str) -> Optional[str]:
        # A done is a run's last event: nothing is published after it.
        newest = await self._newest(run_id)
        return newest.event_id if newest is not None and newest.ends_stream else None

    async def replay_after(self, run_id: str, event_id: str) -> Optional[Replay]:
        async def both_reads(client: Any) -> Any:
            key = await self._key(run_id)
            async with released_pipeline(client, transaction=True) as pipe:  # both reads see one stream
                pipe.xrange(key, event_id, event_id, count=1)
                pipe.xrange(key, "(" + event_id, "+")
                return await pipe.execute()

        found, after = await self._router.call(wire.run_channel(run_id), both_reads)
        if not found:  # unknown, forged, trimmed away (older than history) or another run's
            return None
        entries = [entry for entry, _ in entries_of(after)]
        kept = [entry for entry in entries if not jsontext.nests_deeper(entry.data)]
        self.too_deep.ignored(len(entries) - len(kept))
        return Replay(kept, client_has_done=entries_of(found)[0][0].ends_stream)

    async def close(self) -> None:
        await self._router.close()


__all__ = ["CLUSTER_PUBLISH_SCRIPT", "DELIVERED_HERE", "PUBLISH_SCRIPT",
           "PublishCall", "RedisHistory", "released_pipeline", "script_result",
           "split_origin", "stream_key", "history_key"]
