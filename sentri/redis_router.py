"""Key commands to the Redis that holds the key: the one Redis, or on a cluster the slot's master.

Used by everything that reads or writes keys outside the relay's session: resume reads
(``RedisHistory``), revocation checks (``RedisRevocations``), the worker publisher and
``sentri emit``. Whether ``REDIS_URL`` is a cluster is asked on first use (``CLUSTER SLOTS``,
``sentri.redis_slots.probe``); after an error that says the map may be stale (a connection
error, ``MOVED``, ``CLUSTERDOWN``, ``TRYAGAIN``) it is asked again before the next command,
and a command that failed that way is retried once on the new owner. A single Redis is
used exactly as before: one client on the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Awaitable, Callable, Dict, List, Optional, TypeVar

import redis
import redis.asyncio

from .redis_slots import ClusterDownError, Node, SlotMap, node_url, probe, probe_sync, seed_urls

T = TypeVar("T")

# Connections per Redis node for the key commands of this process (resume reads, revocation
# checks). A command waits for a free one, up to the client's connect timeout. Unbounded, a
# reconnect storm (an nginx reload moving every stream at once) opened one per concurrent read,
# ~70 per instance, and kept them all idle for good (Redis's connected_clients went from 110 to
# 311 at a reload-only soak's first reload and stayed there); RSS stayed 10-13 MB higher.
MAX_CONNECTIONS_PER_NODE = 16

log = logging.getLogger("sentri.redis")

# Answers that mean "not on this node (any more)": the command did not run, so it may be resent.
_REDIRECTS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")
# redis-py names them by class and strips their word from the message (hiredis or not decides
# which): recognised by either, and a log line puts the word back (``what_failed``).
_REDIRECT_CLASSES = {"MovedError": "MOVED", "AskError": "ASK", "TryAgainError": "TRYAGAIN",
                     "ClusterDownError": "CLUSTERDOWN"}


def is_stale_map_error(error: BaseException) -> bool:
    """Whether an error says the slot map should be asked for again."""
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError, ClusterDownError, OSError)):
        return True
    if isinstance(error, redis.ResponseError):
        return str(error).split(" ", 1)[0] in _REDIRECTS or type(error).__name__ in _REDIRECT_CLASSES
    return False


def what_failed(error: BaseException) -> str:
    """``Redis answered MOVED 866 10.0.0.2:7001``, or ``TimeoutError (Timeout reading from ...)``."""
    if isinstance(error, redis.ResponseError):
        answer = str(error)
        word = _REDIRECT_CLASSES.get(type(error).__name__)
        if word is not None and not answer.startswith(word):
            answer = f"{word} {answer}"
        return f"Redis answered {answer}"
    return f"{type(error).__name__} ({error})"


def probe_order(seeds: List[str], slot_map: Optional[SlotMap]) -> List[str]:
    """Whom to ask for the slot map, in turn: the seeds, then every node the last map named."""
    known = slot_map.nodes if slot_map is not None else []
    return seeds + [node_url(seeds[0], node.host, node.port) for node in known]


class RedisRouter:
    """Async: ``await router.call(key, lambda client: client.exists(key))``."""

    def __init__(self, redis_url: str, **client_options: Any) -> None:
        self.redis_url = redis_url
        self.seeds = seed_urls(redis_url)
        self._options = client_options
        self._timeout_s = float(client_options.get("socket_connect_timeout") or 1.0)
        self.slot_map: Optional[SlotMap] = None
        self.is_cluster: Optional[bool] = None  # None: not asked yet (or asked again next time)
        self._clients: Dict[str, Any] = {}
        self._probing: Optional[asyncio.Future[None]] = None

    def _client(self, url: str) -> Any:
        client = self._clients.get(url)
        if client is None:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                url, max_connections=MAX_CONNECTIONS_PER_NODE, timeout=self._timeout_s, **self._options)
            client = self._clients[url] = redis.asyncio.Redis(connection_pool=pool)
        return client

    async def _learn(self) -> None:
        last_error: Optional[BaseException] = None
        for url in probe_order(self.seeds, self.slot_map):
            try:
                found = await probe(url, self._timeout_s)
            except Exception as error:  # that node is away: ask the next
                last_error = error
                continue
            if self.is_cluster is None and self.slot_map is not None:
                log.info("redis cluster: slot map asked again of %s: %s", url,
                         "not a cluster" if found is None else f"{len(found.masters)} masters, covered={found.covered}")
            self.slot_map, self.is_cluster = found, found is not None
            return
        raise last_error if last_error is not None else ClusterDownError("no seed node")

    async def _ensure_known(self) -> None:
        if self.is_cluster is not None:
            return
        if self._probing is None:
            self._probing = asyncio.ensure_future(self._learn())
            # Its callers may all have timed out (a revocation check waits 0.5 s): the error
            # is still retrieved, and the next caller asks again.
            self._probing.add_done_callback(lambda done: done.cancelled() or done.exception())
        probing = self._probing
        try:
            await asyncio.shield(probing)
        finally:
            if self._probing is probing and probing.done():
                self._probing = None

    async def learn(self, timeout_s: float) -> None:
        """Ask now whether it is a cluster (and its slot map), within ``timeout_s``; errors are
        left for the first command, which asks again. Called at start-up so that the first
        commands of a reconnect storm do not also pay for the probe."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ensure_known(), timeout_s)

    async def client_for(self, name: str) -> Any:
        await self._ensure_known()
        if not self.is_cluster or self.slot_map is None:
            return self._client(self.seeds[0])
        owner = self.slot_map.owner_of(name)
        if owner is None:
            raise ClusterDownError(f"no master serves the slot of {name}")
        return self._client(node_url(self.seeds[0], owner.host, owner.port))

    def stale(self) -> None:
        """Ask for the slot map again before the next command (single Redis: nothing changes)."""
        if self.is_cluster:
            self.is_cluster = None

    async def call(self, name: str, command: Callable[[Any], Awaitable[T]]) -> T:
        """``command(client)`` on the node holding ``name``; once more after a stale-map error."""
        client = None
        try:
            client = await self.client_for(name)
            return await command(client)
        except Exception as error:
            if not self.is_cluster or not is_stale_map_error(error):
                raise
            log.info("redis cluster: %s for %s at %s; asking for the slot map again", what_failed(error), name,
                     _address(client))
            self.stale()
        return await command(await self.client_for(name))

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
            await client.connection_pool.disconnect()  # its own pool, which aclose() leaves open


def _address(client: Any) -> str:
    """``host:port`` of an asyncio client, for logs (never its password)."""
    if client is None:
        return "no node"
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


class SyncRedisRouter:
    """The same for synchronous callers (the worker publisher, ``sentri emit``)."""

    def __init__(self, redis_url: str, **client_options: Any) -> None:
        self.seeds = seed_urls(redis_url)
        self._options = client_options
        self._timeout_s = float(client_options.get("socket_connect_timeout") or 5.0)
        self.slot_map: Optional[SlotMap] = None
        self.is_cluster: Optional[bool] = None
        self._clients: Dict[str, Any] = {}

    def _client(self, url: str) -> Any:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = redis.Redis.from_url(url, **self._options)
        return client

    def ensure_known(self) -> None:
        if self.is_cluster is not None:
            return
        last_error: Optional[BaseException] = None
        for url in probe_order(self.seeds, self.slot_map):
            try:
                found = probe_sync(url, self._timeout_s)
            except Exception as error:  # that node is away: ask the next
                last_error = error
                continue
            self.slot_map, self.is_cluster = found, found is not None
            return
        raise last_error if last_error is not None else ClusterDownError("no seed node")

    def client_at(self, node: Optional[Node]) -> Any:
        if node is None:
            return self._client(self.seeds[0])
        return self._client(node_url(self.seeds[0], node.host, node.port))

    def owner_of(self, name: str) -> Optional[Node]:
        """None on a single Redis; raises ``ClusterDownError`` for a slot without a master."""
        self.ensure_known()
        if not self.is_cluster or self.slot_map is None:
            return None
        owner = self.slot_map.owner_of(name)
        if owner is None:
            raise ClusterDownError(f"no master serves the slot of {name}")
        return owner

    def stale(self) -> None:
        if self.is_cluster:
            self.is_cluster = None

    def close(self) -> None:
        clients: List[Any] = list(self._clients.values())
        self._clients = {}
        for client in clients:
            client.close()
