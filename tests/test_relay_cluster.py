"""Two instances on a Redis Cluster (docs/relay.md §9): this test process (instance A) on one node,
``sentri serve`` (instance B) on another; events travel over sharded pub/sub, exactly once.
One cluster for the module: these tests do not break it (the fault tests have their own)."""

from __future__ import annotations

import json

import pytest

from sentri.redis_slots import cluster_keys
from sentri.worker_publisher import RunEventPublisher

from .frames import open_live
from .redis_cluster import redis_cluster  # noqa: F401 (fixture)
from .redis_server import RELAY_CONNECTED, second_instance
from .services import wait_until
from .sseclient import open_request

CHANNEL = "sentri:run:RUN-1"
NODE_MESSAGE = ('{"type":"result","result":{"id":"TC-1","ratio":1e-7,"name":"Übersicht ✓"},'
                '"_origin":"inst_1767225600000_k3x9qa"}').encode()
NODE_FRAME = 'data: {"type":"result","result":{"id":"TC-1","ratio":1e-7,"name":"Übersicht ✓"}}\n\n'.encode()


@pytest.fixture
def settings(settings, redis_cluster):  # noqa: F811 - instance A on the cluster's first node
    return settings.replace(redis_url=redis_cluster.nodes[0].url, relay_retry_max_s=0.2, retry_ms=0)


@pytest.fixture
def instance_b(settings, redis_cluster, tmp_path, world):  # noqa: F811 - instance B on the fourth node
    with second_instance(settings.database_url, redis_cluster.nodes[3].url, tmp_path) as process:
        process.wait_for_line(RELAY_CONNECTED)
        yield process


@pytest.fixture(autouse=True)
def fresh_run(redis_cluster):  # noqa: F811 - the module shares one cluster: no run's history leaks over
    yield
    with redis_cluster.master_of(CHANNEL).client() as client:
        client.delete(cluster_keys("RUN-1").stream)


def split_frame(frame):
    """``id: <id>\\ndata: ...\\n\\n`` -> (id, the data part)."""
    assert frame.startswith(b"id: "), frame
    id_line, _, rest = frame.partition(b"\n")
    return id_line[len(b"id: "):].decode(), rest


@pytest.mark.gen_test(timeout=60)
async def test_events_reach_both_instances_exactly_once_in_id_order_over_sharded_pub_sub(
        port, context, world, redis_cluster, instance_b):  # noqa: F811
    assert await context.bus.wait_connected(10.0)
    on_a, on_b = await open_live(port, world), await open_live(instance_b.port, world)
    # Both subscribed sharded on the run's master; nothing classic (the compatibility setting is off).
    await wait_until(lambda: redis_cluster.shard_subscribers(CHANNEL) == 2, what="two sharded subscribers")
    assert redis_cluster.classic_subscribers(CHANNEL) == 0

    for step in range(20):
        context.hub.emit("RUN-1", "log", {"message": f"[2026-01-01T00:00:00.000Z] step {step}"})
    context.hub.emit("RUN-1", "done", {"status": "completed", "passed": 3, "failed": 0, "total": 3})

    expected = [f'data: {{"type":"log","message":"[2026-01-01T00:00:00.000Z] step {step}"}}\n\n'.encode()
                for step in range(20)]
    expected.append(b'data: {"type":"done","status":"completed","passed":3,"failed":0,"total":3}\n\n')
    received = {}
    for name, response in (("a", on_a), ("b", on_b)):
        received[name] = [split_frame(await response.next_frame(10.0)) for _ in range(21)]
        assert [data for _, data in received[name]] == expected
        assert await response.server_closed()  # and nothing after the done
    with redis_cluster.master_of(CHANNEL).client() as client:
        stored = [entry_id.decode() for entry_id, _ in client.xrange(cluster_keys("RUN-1").stream)]
    assert len(stored) == 21
    for frames in received.values():
        assert [event_id for event_id, _ in frames] == stored  # the stream's ids, in order, once each
    # The id's sequence part: a per-slot counter times 16384 plus the slot, unique across runs.
    slot = cluster_keys("RUN-1").slot
    assert all(int(event_id.split("-")[1]) % 16384 == slot for event_id in stored)


@pytest.mark.gen_test(timeout=60)
async def test_a_node_style_classic_publish_is_not_relayed_when_the_compatibility_setting_is_off(
        port, context, world, redis_cluster):  # noqa: F811
    assert await context.bus.wait_connected(10.0)
    on_a = await open_live(port, world)
    await wait_until(lambda: redis_cluster.shard_subscribers(CHANNEL) == 1, what="a sharded subscriber")
    assert redis_cluster.nodes[1].command("PUBLISH", CHANNEL, NODE_MESSAGE) == 0  # nobody listens classic
    context.hub.emit("RUN-1", "log", {"message": "[2026-01-01T00:00:00.000Z] after"})
    frame = await on_a.next_frame(10.0)
    assert split_frame(frame)[1] == b'data: {"type":"log","message":"[2026-01-01T00:00:00.000Z] after"}\n\n'


@pytest.mark.gen_test(timeout=60)
async def test_the_worker_publisher_and_resume_work_against_the_cluster(port, context, world, redis_cluster):  # noqa: F811
    assert await context.bus.wait_connected(10.0)
    on_a = await open_live(port, world)
    await wait_until(lambda: redis_cluster.shard_subscribers(CHANNEL) == 1, what="a sharded subscriber")
    # A seed list whose first node is not the run's master: the publisher routes by slot.
    publisher = RunEventPublisher(redis_cluster.seeds(1, 2))
    try:
        first_id, receivers = publisher.publish("RUN-1", "log", {"message": "[2026-01-01T00:00:00.000Z] one"})
        second_id, _ = publisher.publish("RUN-1", "log", {"message": "[2026-01-01T00:00:00.000Z] two"})
    finally:
        publisher.close()
    assert receivers == 1  # instance A's sharded subscription
    assert split_frame(await on_a.next_frame(10.0)) == (
        first_id, b'data: {"type":"log","message":"[2026-01-01T00:00:00.000Z] one"}\n\n')
    assert split_frame(await on_a.next_frame(10.0))[0] == second_id
    on_a.close()

    # Resume after the first: the history is read from the run's master.
    resumed = await open_request(port, world.events_path(), headers={"Last-Event-ID": first_id})
    assert resumed.status == 200
    assert split_frame(await resumed.next_frame(10.0)) == (
        second_id, b'data: {"type":"log","message":"[2026-01-01T00:00:00.000Z] two"}\n\n')


@pytest.mark.gen_test(timeout=60)
async def test_readiness_and_metrics_show_the_cluster_and_each_shard_connection(
        http_client, port, context, redis_cluster):  # noqa: F811
    assert await context.bus.wait_connected(10.0)
    response = await http_client.fetch(f"http://127.0.0.1:{port}/readyz", raise_error=False)
    assert (response.code, json.loads(response.body)) == (200, {"status": "ready"})
    text = context.metrics.render().decode() if hasattr(context.metrics, "render") else None
    assert text is None or "sentri_relay_shard_connected" in text
    masters = sorted(f"127.0.0.1:{node.port}" for node in redis_cluster.masters())
    assert sorted(context.bus.shard_connections) == masters
    assert all(context.bus.shard_connections.values())
