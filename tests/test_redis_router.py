"""The router of key commands (``sentri.redis_router``): resume reads and revocation checks share
a bounded set of connections per Redis node, however many streams connect at once."""

from __future__ import annotations

import asyncio

import pytest

from sentri.redis_router import MAX_CONNECTIONS_PER_NODE, RedisRouter

from .redis_server import redis_server  # noqa: F401 (fixture)

READS = 300  # concurrent reads, as a reconnect storm's connects make them


def clients_of(redis_server) -> int:  # noqa: F811
    with redis_server.client() as client:
        return len(client.client_list()) - 1  # less this one


@pytest.mark.gen_test(timeout=30)
async def test_a_storm_of_concurrent_reads_is_answered_over_at_most_the_bounded_connections_closed_with_the_router(
        redis_server):  # noqa: F811
    with redis_server.client() as client:
        client.set("storm-key", b"kept")
    before = clients_of(redis_server)
    router = RedisRouter(redis_server.url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        answers = await asyncio.gather(*(router.call("storm-key", lambda client: client.get("storm-key"))
                                         for _ in range(READS)))
        assert answers == [b"kept"] * READS
        assert clients_of(redis_server) - before == MAX_CONNECTIONS_PER_NODE  # not one per read, kept idle for good
    finally:
        await router.close()
    assert clients_of(redis_server) == before
