"""SENTRI_REDIS_CLUSTER_NODE_COMPAT on (docs/relay.md §9): Node instances on the same cluster
publish and subscribe classic; with the setting on, their events reach this project's clients
and this project's reach theirs, each exactly once. (Off: tests/test_relay_cluster.py.)"""

from __future__ import annotations

import asyncio

import pytest

from sentri.redis_slots import cluster_keys
from sentri.worker_publisher import RunEventPublisher

from .console import sentri_emit
from .frames import open_live
from .redis_cluster import redis_cluster  # noqa: F401 (fixture)
from .redis_server import RELAY_CONNECTED, second_instance
from .services import wait_until
from .test_relay_cluster import CHANNEL, NODE_FRAME, NODE_MESSAGE, fresh_run, split_frame  # noqa: F401 (fixture)

LOG_FRAME = b'data: {"type":"log","message":"[2026-01-01T00:00:00.000Z] from python"}\n\n'
DONE_FRAME = b'data: {"type":"done","status":"completed","passed":3,"failed":0,"total":3}\n\n'


@pytest.fixture
def settings(settings, redis_cluster):  # noqa: F811
    return settings.replace(redis_url=redis_cluster.nodes[0].url, relay_retry_max_s=0.2, retry_ms=0,
                            redis_cluster_node_compat=True)


@pytest.fixture
def instance_b(settings, redis_cluster, tmp_path, world):  # noqa: F811
    with second_instance(settings.database_url, redis_cluster.seeds(4, 5), tmp_path,
                         SENTRI_REDIS_CLUSTER_NODE_COMPAT="true") as process:
        process.wait_for_line(RELAY_CONNECTED)
        yield process


@pytest.mark.gen_test(timeout=60)
async def test_node_and_python_events_cross_both_ways_and_each_client_gets_each_once(
        port, context, world, redis_cluster, instance_b):  # noqa: F811
    assert await context.bus.wait_connected(10.0)
    on_a, on_b = await open_live(port, world), await open_live(instance_b.port, world)
    await wait_until(lambda: redis_cluster.shard_subscribers(CHANNEL) == 2, what="two sharded subscribers")
    await wait_until(lambda: redis_cluster.classic_subscribers(CHANNEL) == 2, what="two classic subscribers")
    # A Node instance: a plain (non-cluster) client on a node of its own, subscribed classic.
    node_instance = redis_cluster.nodes[5].client().pubsub()
    node_instance.subscribe(CHANNEL)
    assert node_instance.get_message(timeout=5)["type"] == "subscribe"

    context.hub.emit("RUN-1", "log", {"message": "[2026-01-01T00:00:00.000Z] from python"})
    first = {name: split_frame(await response.next_frame(10.0)) for name, response in (("a", on_a), ("b", on_b))}
    assert {data for _, data in first.values()} == {LOG_FRAME}
    event_id = first["a"][0]
    assert first["b"][0] == event_id

    # What Node received: this project's message, classic, its id in _origin as on the sharded channel.
    received = await asyncio.get_running_loop().run_in_executor(None, lambda: node_instance.get_message(timeout=5))
    assert received["type"] == "message"
    assert received["data"] == (b'{"type":"log","message":"[2026-01-01T00:00:00.000Z] from python","_origin":"'
                                + f"{context.instance_id}|{event_id}".encode() + b'"}')

    # Node publishes: its classic message reaches both instances' clients, byte for byte, without an id.
    # (a cluster counts only the receiving node's own subscribers: Node itself; A and B listen elsewhere)
    assert redis_cluster.nodes[5].command("PUBLISH", CHANNEL, NODE_MESSAGE) == 1
    for response in (on_a, on_b):
        assert await response.next_frame(10.0) == NODE_FRAME
    # Only now the done: Node's classic message and this project's sharded ones take different
    # paths through the cluster, so nothing orders one before the other.
    context.hub.emit("RUN-1", "done", {"status": "completed", "passed": 3, "failed": 0, "total": 3})
    for response in (on_a, on_b):
        assert split_frame(await response.next_frame(10.0))[1] == DONE_FRAME
        assert await response.server_closed()  # nothing twice: the classic copies of ours were dropped
    node_instance.close()
    with redis_cluster.master_of(CHANNEL).client() as client:
        assert client.xlen(cluster_keys("RUN-1").stream) == 2  # Node's event has no id and no history


def test_workers_and_sentri_emit_also_publish_classic_with_the_setting_and_only_sharded_without(
        redis_cluster):  # noqa: F811
    node_instance = redis_cluster.nodes[5].client().pubsub()
    node_instance.subscribe(CHANNEL)
    assert node_instance.get_message(timeout=5)["type"] == "subscribe"
    seed = redis_cluster.nodes[1].url
    quiet, loud = RunEventPublisher(seed, origin="worker_quiet"), RunEventPublisher(
        seed, origin="worker_loud", cluster_node_compat=True)
    try:
        quiet.publish("RUN-1", "log", {"message": "sharded only"})
        loud_id, _ = loud.publish("RUN-1", "log", {"message": "classic too"})
    finally:
        quiet.close()
        loud.close()
    emitted = sentri_emit("RUN-1", "log", '{"message":"from emit"}', redis_url=seed,
                          SENTRI_REDIS_CLUSTER_NODE_COMPAT="true")
    assert emitted.returncode == 0, emitted.stderr
    # Classic messages reach a node in the order they were published: the first one Node's
    # client gets is the worker's with the setting, so the one without it sent nothing classic.
    first = node_instance.get_message(timeout=5)
    assert first["data"] == b'{"type":"log","message":"classic too","_origin":"worker_loud|' + loud_id.encode() + b'"}'
    second = node_instance.get_message(timeout=5)
    assert second["data"].startswith(b'{"type":"log","message":"from emit","_origin":"worker_')
    node_instance.close()
    with redis_cluster.master_of(CHANNEL).client() as client:
        assert client.xlen(cluster_keys("RUN-1").stream) == 3  # all three kept, with ids
