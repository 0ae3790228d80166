"""Redis Cluster addressing (docs/relay.md §9): seeds, hash slots, the slot map, cluster key names.

``REDIS_URL`` may name one node or a comma-separated list of seed nodes; whether it is a
cluster is asked of Redis itself (``CLUSTER SLOTS``), never configured. On a cluster every
key this project writes for a run hashes to the slot of the run's channel
``sentri:run:<runId>`` (whose name is fixed by the Node backend), so the publish script's
keys and its sharded ``SPUBLISH`` all live on one shard.

Pure except ``probe`` / ``probe_sync``, which ask one node for the slot map.
"""

from __future__ import annotations

import binascii
import functools
import itertools
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import urlsplit, urlunsplit

from redis.crc import key_slot as _key_slot
from redis.exceptions import RedisError

from . import cancel_safe
from .bus import messages as wire

SLOTS = 16384
STREAM_PREFIX = "sentri:events:"
SEQUENCE_PREFIX = "sentri:events:seq:"


def key_slot(name: str) -> int:
    """The hash slot of a key or sharded channel name (hash tags honoured, as Redis does)."""
    return int(_key_slot(name.encode("utf-8")))


def seed_urls(redis_url: str) -> List[str]:
    """``redis://h1:7000,h2:7000`` -> one URL per node; a bare ``host:port`` after the first
    takes the first's scheme, credentials and query (one password for a whole cluster)."""
    parts = [part.strip() for part in redis_url.split(",") if part.strip()]
    if not parts:
        return []
    urls = [parts[0]]
    for part in parts[1:]:
        urls.append(part if "://" in part else node_url(parts[0], *_host_port(part)))
    return urls


def _host_port(text: str) -> Tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        return text, 6379
    return host.strip("[]"), int(port)


def node_url(template_url: str, host: str, port: int) -> str:
    """``template_url`` (scheme, credentials, query) pointed at another node."""
    parts = urlsplit(template_url)
    credentials = parts.netloc.rpartition("@")[0]
    shown_host = f"[{host}]" if ":" in host else host
    netloc = (credentials + "@" if credentials else "") + f"{shown_host}:{port}"
    return urlunsplit((parts.scheme or "redis", netloc, "", parts.query, ""))


@functools.lru_cache(maxsize=1)
def slot_tags() -> Tuple[str, ...]:
    """For each slot, a short string hashing to it: the hash tag of that slot's counter key.

    Built once (a fraction of a second) from the shortest lowercase base-36 strings, in
    order; deterministic, so every process and every publisher names the same key for a slot.
    """
    tags: List[Optional[str]] = [None] * SLOTS
    missing = SLOTS
    for length in itertools.count(1):
        for letters in itertools.product(_TAG_LETTERS, repeat=length):
            tag = "".join(letters)
            slot = binascii.crc_hqx(tag.encode(), 0) % SLOTS  # no braces: the whole tag is hashed
            if tags[slot] is None:
                tags[slot] = tag
                missing -= 1
                if not missing:
                    return tuple(tag for tag in tags if tag is not None)
    raise AssertionError("unreachable")  # pragma: no cover


_TAG_LETTERS = "0123456789abcdefghijklmnopqrstuvwxyz"


class ClusterKeys(NamedTuple):
    """A run's names on a cluster, all in the slot of its channel."""

    channel: str
    stream: str
    sequence: str
    slot: int


def cluster_keys(run_id: str) -> ClusterKeys:
    """``sentri:events:{sentri:run:<runId>}`` (its hash tag is the channel's name, so same slot)
    unless the run id holds braces that make the two hash differently; then
    ``sentri:events:{<slot tag>}:<runId>``. The id counter is ``sentri:events:seq:{<slot tag>}``,
    one per slot: ids are ``<ms>-<counter * 16384 + slot>``, unique across every run."""
    channel = wire.run_channel(run_id)
    slot = key_slot(channel)
    stream = STREAM_PREFIX + "{" + channel + "}"
    tag = slot_tags()[slot]
    if key_slot(stream) != slot:
        stream = STREAM_PREFIX + "{" + tag + "}:" + run_id
    return ClusterKeys(channel, stream, SEQUENCE_PREFIX + "{" + tag + "}", slot)


class Node(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class SlotMap:
    """Which master serves which slot, from one ``CLUSTER SLOTS`` answer."""

    def __init__(self, ranges: Sequence[Tuple[int, int, Node]], replicas: Sequence[Node] = (),
                 replica_counts: Optional[Dict[Node, int]] = None) -> None:
        self._owner: List[Optional[Node]] = [None] * SLOTS
        for first, last, node in ranges:
            for slot in range(first, last + 1):
                self._owner[slot] = node
        self.masters: List[Node] = sorted({node for _, _, node in ranges})
        self.replicas: List[Node] = sorted(set(replicas) - set(self.masters))
        # Replicas serving each master (CLUSTER SLOTS leaves out those the cluster marked failed).
        self.replica_counts: Dict[Node, int] = dict(replica_counts or {})

    @classmethod
    def from_cluster_slots(cls, answer: Any, asked: Node) -> SlotMap:
        ranges: List[Tuple[int, int, Node]] = []
        replicas: List[Node] = []
        counts: Dict[Node, int] = {}
        for row in answer or ():
            first, last, master = int(row[0]), int(row[1]), row[2]
            host = _text(master[0]) or asked.host  # "" or "?" means: the node that answered
            node = Node(asked.host if host == "?" else host, int(master[1]))
            ranges.append((first, last, node))
            replicas.extend(Node(_text(replica[0]) or asked.host, int(replica[1])) for replica in row[3:])
            counts[node] = max(counts.get(node, 0), len(row) - 3)
        return cls(ranges, replicas, counts)

    def owner(self, slot: int) -> Optional[Node]:
        return self._owner[slot]

    def owner_of(self, name: str) -> Optional[Node]:
        return self._owner[key_slot(name)]

    @property
    def covered(self) -> bool:
        return all(node is not None for node in self._owner)

    @property
    def nodes(self) -> List[Node]:
        return self.masters + self.replicas


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def address_of(url: str) -> Node:
    parts = urlsplit(url)
    return Node(parts.hostname or "localhost", parts.port or 6379)


def is_not_a_cluster(error: BaseException) -> bool:
    """The answer of a Redis without cluster mode (or that may not say) to ``CLUSTER SLOTS``."""
    import redis

    return isinstance(error, redis.ResponseError)


async def probe(url: str, timeout_s: float) -> Optional[SlotMap]:
    """The slot map when ``url`` is a cluster node, None for a single Redis; raises when unreachable."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client: Any = redis.asyncio.Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=timeout_s,
                                          socket_timeout=timeout_s, health_check_interval=0)
    try:
        # Bounded by the client's own socket timeouts: an asyncio.wait_for here could, when
        # cancelled as the answer arrives, leave an error nobody retrieves.
        answer = await client.execute_command("CLUSTER", "SLOTS")
    except Exception as error:
        if is_not_a_cluster(error):
            return None
        raise
    finally:
        await cancel_safe.finish(client.aclose())
    return SlotMap.from_cluster_slots(answer, address_of(url))


def probe_sync(url: str, timeout_s: float) -> Optional[SlotMap]:
    """``probe`` for synchronous callers (the worker publisher, ``sentri emit``)."""
    import redis

    client: Any = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        answer = client.execute_command("CLUSTER", "SLOTS")
    except redis.ResponseError:
        return None
    finally:
        client.close()
    return SlotMap.from_cluster_slots(answer, address_of(url))


class ClusterDownError(RedisError):
    """A slot has no master in the slot map (the cluster is failing over or misconfigured).

    A ``redis.RedisError``, so callers that handle Redis being away (``sentri emit``) handle it too.
    """


# Redis Cluster replicates asynchronously. A master paused past the node timeout, whose replica
# took over meanwhile, runs what waited in its sockets when it comes back, before it learns it
# was replaced; the cluster then throws those writes away with their ids (found by the soak:
# two events answered with ids that no stream and no history ever had). So on a master with a
# replica, a publish is followed by ``WAIT 1 <REPLICA_CONFIRM_TIMEOUT_MS>``; when no replica
# confirms in time, another master is asked who owns the slot now (``ReplicaConfirmations``):
# still the same node (a slow or lost replica: the write stands), or not (sent again to the
# new owner: at worst twice in history, never lost).
REPLICA_CONFIRM_TIMEOUT_MS = 100
# A master whose replica did not confirm in time but that still serves its slots (its replica is
# paused, dead or far behind) is not asked to wait again for this long: a failover needs that
# replica, and each batch would otherwise wait the whole timeout.
UNCONFIRMING_PAUSE_S = 5.0


class ReplicaConfirmations:
    """Whether a publish on a master is followed by ``WAIT`` for a replica's confirmation."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._not_before: Dict[Node, float] = {}

    def wait_command(self, slot_map: Optional[SlotMap], node: Optional[Node]) -> Optional[Tuple[Any, ...]]:
        """The ``WAIT`` to send after publishing on ``node``; None on a single Redis, for a master
        without replicas, and for one whose replica lately did not confirm."""
        if slot_map is None or node is None or slot_map.replica_counts.get(node, 0) == 0:
            return None
        if self._clock() < self._not_before.get(node, 0.0):
            return None
        return ("WAIT", 1, REPLICA_CONFIRM_TIMEOUT_MS)

    def answers_stand(self, node: Node, slots: Sequence[int], other: Node, answer_of_other: Any) -> bool:
        """No replica confirmed the publishes on ``node``: whether their answers stand, by
        ``other``'s ``CLUSTER SLOTS`` answer (None: it could not say). When they do, ``node``
        is not made to wait again for ``UNCONFIRMING_PAUSE_S``."""
        if answer_of_other is None or not still_owner(node, slots, other, answer_of_other):
            return False
        self._not_before[node] = self._clock() + UNCONFIRMING_PAUSE_S
        return True


def still_owner(node: Node, slots: Sequence[int], other: Node, answer_of_other: Any) -> bool:
    """Whether ``node`` still serves every one of ``slots`` in ``other``'s ``CLUSTER SLOTS`` answer."""
    seen = SlotMap.from_cluster_slots(answer_of_other, other)
    return all(seen.owner(slot) == node for slot in slots)


def other_master(slot_map: SlotMap, node: Node) -> Optional[Node]:
    """A master to ask about ``node``'s slots: the first other one in order; None when it is the only one."""
    others = [master for master in slot_map.masters if master != node]
    return others[0] if others else None


class UnconfirmedPublishError(RedisError):
    """No replica confirmed a publish and its master no longer serves the slot: the write may be
    thrown away by the cluster, so the publish is to be sent again (a ``redis.RedisError``:
    callers that retry on Redis errors retry it)."""


class ClusterChangedError(RedisError):
    """A shard said a slot moved (``MOVED``, or a ``sunsubscribe`` it sent by itself)."""
