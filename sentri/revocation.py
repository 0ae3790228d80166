"""Revoked token ids (docs/auth.md §4). Without Redis nothing is ever revoked here: the Node
backend shares revocations only through Redis, which ``RedisRevocations`` reads.

Node revokes a token by setting ``sentri:revoked:<jti>`` (with a TTL) and publishing
``{"jti":…,"exp":…}`` on ``sentri:token:revoked``. A new stream checks the key; open
streams are closed by the relay when the notice arrives (``RedisBus``), which also tells
this object so a connect racing the notice is refused without asking Redis again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Dict, Optional

from .bus.messages import REVOKED_KEY_PREFIX

if TYPE_CHECKING:  # pragma: no cover
    from .bus import Bus
    from .config import Settings

log = logging.getLogger("sentri.revocation")

# How long a notice without ``exp`` is remembered locally (Redis keeps the key anyway).
REMEMBER_WITHOUT_EXP_S = 3600.0
# How long Redis's "not revoked" for a jti is reused by later connects, from when it was asked.
# A notice on the channel overrides it at once; a key set without a notice is seen after this.
NOT_REVOKED_MAX_AGE_S = 1.0


class Revocations:
    async def is_revoked(self, jti: str) -> bool:
        return False

    async def warm_up(self) -> None:
        """Make what the first check needs ready (called at start-up)."""

    async def close(self) -> None:
        """Release connections."""


class RedisRevocations(Revocations):
    """``EXISTS sentri:revoked:<jti>`` at connect, bounded by a short timeout.

    When Redis is unreachable or slow the token is not refused (the relay is down too, so
    refusing would turn a Redis outage into an outage of every stream); that is logged once
    per outage, not once per connect.
    """

    def __init__(self, redis_url: str, timeout_s: float = 0.5) -> None:
        self.redis_url = redis_url
        self.timeout_s = timeout_s
        self._client: Any = None
        self._remembered: Dict[str, float] = {}  # jti -> until (epoch seconds)
        # jti -> until (monotonic): Redis said "not revoked" when asked less than NOT_REVOKED_MAX_AGE_S ago.
        self._not_revoked: Dict[str, float] = {}
        # jti -> the EXISTS in flight: a storm of connects with one token asks Redis once.
        self._asking: Dict[str, asyncio.Future[bool]] = {}
        self._failing = False

    def remember(self, jti: str, expires_at: Optional[float]) -> None:
        self._not_revoked.pop(jti, None)
        self._asking.pop(jti, None)  # an answer in flight may predate the notice: not shared
        now = time.time()
        self._remembered[jti] = expires_at if expires_at is not None else now + REMEMBER_WITHOUT_EXP_S
        if len(self._remembered) > 1024:  # prune what has expired anyway
            self._remembered = {key: until for key, until in self._remembered.items() if until > now}

    async def is_revoked(self, jti: str) -> bool:
        until = self._remembered.get(jti)
        if until is not None and until > time.time():
            return True
        checked_until = self._not_revoked.get(jti)
        if checked_until is not None:
            if checked_until > time.monotonic():
                return False
            del self._not_revoked[jti]
        asking = self._asking.get(jti)
        if asking is None:
            asking = self._asking[jti] = asyncio.ensure_future(self._ask(jti))
            asking.add_done_callback(lambda done: self._asked(jti, done))
        return await asyncio.shield(asking)

    def _asked(self, jti: str, done: asyncio.Future[bool]) -> None:
        if self._asking.get(jti) is done:
            del self._asking[jti]

    async def _ask(self, jti: str) -> bool:
        asked = time.monotonic()
        try:
            key = REVOKED_KEY_PREFIX + jti
            exists = await asyncio.wait_for(self._redis().call(key, lambda client: client.exists(key)), self.timeout_s)
        except Exception as error:  # unreachable, slow, or refusing: do not refuse the client for it
            if not self._failing:
                self._failing = True
                log.warning("revocation check unavailable (%s); accepting tokens unchecked until redis answers",
                            type(error).__name__)
            return False
        if self._failing:
            self._failing = False
            log.info("revocation check available again")
        if not exists and self._asking.get(jti) is not None:  # no notice arrived meanwhile
            if len(self._not_revoked) > 4096:
                now = time.monotonic()
                self._not_revoked = {key: until for key, until in self._not_revoked.items() if until > now}
            self._not_revoked[jti] = asked + NOT_REVOKED_MAX_AGE_S
        return bool(exists)

    async def warm_up(self) -> None:
        # Whether REDIS_URL is a cluster is asked once; asked by the first connects of a storm,
        # the probe and the EXISTS did not fit in the check's bound (bench: the first checks of
        # a 5,000-connect burst failed open).
        await self._redis().learn(self.timeout_s)

    def _redis(self) -> Any:
        # Created on first use, on the running loop: a redis.asyncio client belongs to one loop.
        # The router sends the EXISTS to the one Redis, or on a cluster to the key's master.
        if self._client is None:
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            from .redis_router import RedisRouter

            self._client = RedisRouter(
                self.redis_url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=self.timeout_s,
                health_check_interval=0,
            )
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def make_revocations(settings: Settings, bus: Bus) -> Revocations:
    """Revocations for these settings; with Redis, the relay's notices feed it too."""
    if not settings.redis_url:
        return Revocations()
    revocations = RedisRevocations(settings.redis_url, settings.revocation_check_timeout_s)
    callbacks = getattr(bus, "revocation_callbacks", None)
    if isinstance(callbacks, list):
        callbacks.append(revocations.remember)
    return revocations
