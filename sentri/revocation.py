"""Revoked token ids (SPEC 1.4). Without Redis nothing is ever revoked here: the Node
backend shares revocations only through Redis, which ``RedisRevocations`` reads."""

from __future__ import annotations


class Revocations:
    async def is_revoked(self, jti: str) -> bool:
        return False
