"""Resume reads on a Redis Cluster (``RedisHistory`` through ``sentri.redis_router``): a read
sent to a master that no longer serves the run's slot is answered ``MOVED``; the router logs
where it was sent and what Redis answered, asks for the slot map again and reads from the new
owner, so the stream still gets its id."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis
from redis.exceptions import MovedError

from sentri.redis_history import RedisHistory
from sentri.redis_router import what_failed
from sentri.redis_slots import key_slot
from sentri.worker_publisher import RunEventPublisher

from .redis_cluster import redis_cluster_own  # noqa: F401 (fixture)

CHANNEL = "sentri:run:RUN-9"


def publish_one(cluster) -> str:
    publisher = RunEventPublisher(cluster.seeds(0))
    try:
        event_id, _ = publisher.publish("RUN-9", "log", {"message": "[2026-01-01T00:00:00.000Z] one"})
    finally:
        publisher.close()
    return event_id


@pytest.mark.gen_test(timeout=60)
async def test_a_history_read_answered_moved_is_logged_and_read_again_from_the_slots_new_master(
        redis_cluster_own, caplog):  # noqa: F811
    cluster = redis_cluster_own
    event_id = publish_one(cluster)
    old_master = cluster.master_of(CHANNEL)
    history = RedisHistory(cluster.seeds(0))
    try:
        before = await history.last_id("RUN-9")  # learns the slot map: the old master serves the run
        new_master = await asyncio.get_running_loop().run_in_executor(None, cluster.migrate_slot, CHANNEL)
        with caplog.at_level(logging.INFO, logger="sentri.redis"):
            after = await history.last_id("RUN-9")
    finally:
        await history.close()

    assert (before, after) == (event_id, event_id)
    assert new_master is not old_master
    redirects = [record.getMessage() for record in caplog.records if record.name == "sentri.redis"]
    assert redirects == [
        f"redis cluster: Redis answered MOVED {key_slot(CHANNEL)} {new_master.address} for {CHANNEL} at "
        f"{old_master.address}; asking for the slot map again",
        f"redis cluster: slot map asked again of {cluster.nodes[0].url}: 3 masters, covered=True",
    ]


def test_a_redirect_is_logged_as_redis_sent_it_whichever_parser_named_it():
    with_hiredis, pure_python = MovedError("866 10.0.0.2:7001"), redis.ResponseError("MOVED 866 10.0.0.2:7001")
    assert what_failed(with_hiredis) == what_failed(pure_python) == "Redis answered MOVED 866 10.0.0.2:7001"
    assert what_failed(redis.TimeoutError("Timeout reading from 10.0.0.2:7001")) == (
        "TimeoutError (Timeout reading from 10.0.0.2:7001)")
