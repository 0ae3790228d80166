"""Two instances on a Redis Cluster (docs/relay.md §9): this test process (instance A) on one node,
``sentri serve`` (instance B) on another; events travel over sharded pub/sub, exactly once.
One cluster for the module: these tests do not break it (the fault tests have their own)."""

from __future__ import annotations

import json
import re
import zlib

import jwt
import pytest

from sentri.bus.messages import REVOKED_KEY_PREFIX
from sentri.redis_slots import cluster_keys
from sentri.worker_publisher import RunEventPublisher

from .conftest import JWT_SECRET, token_for
from .console import sentri_emit
from .frames import open_live
from .redis_cluster import redis_cluster  # noqa: F401 (fixture)
from .redis_server import RELAY_CONNECTED, second_instance
from .services import wait_until
from .sseclient import open_request
from .subscription_changes import all_leave_and_the_last_comes_back
from .test_metrics import METRICS_TOKEN, scrape

CHANNEL = "sentri:run:RUN-1"
NODE_MESSAGE = ('{"type":"result","result":{"id":"TC-1","ratio":1e-7,"name":"Übersicht ✓"},'
                '"_origin":"inst_1767225600000_k3x9qa"}').encode()
NODE_FRAME = 'data: {"type":"result","result":{"id":"TC-1","ratio":1e-7,"name":"Übersicht ✓"}}\n\n'.encode()


@pytest.fixture
def settings(settings, redis_cluster):  # noqa: F811 - instance A on the cluster's first node
    # A short watchdog interval: the relay PINGs its connections and checks the cluster's state
    # during each test. Not shorter: its control connections time out after three intervals, and
    # a loaded CI machine can take longer than 0.6 s to answer (a reconnect attempt timed out).
    return settings.replace(redis_url=redis_cluster.nodes[0].url, relay_retry_max_s=0.2, retry_ms=0,
                            relay_ping_interval_s=1.0)


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
async def test_with_the_compatibility_setting_off_node_and_python_events_do_not_cross(
        port, context, world, redis_cluster):  # noqa: F811
    assert await context.bus.wait_connected(10.0)
    on_a = await open_live(port, world)
    await wait_until(lambda: redis_cluster.shard_subscribers(CHANNEL) == 1, what="a sharded subscriber")
    # A Node instance subscribed classic on the run's master, where the publish script runs: a
    # classic copy of ours would reach it before anything published after.
    master = redis_cluster.master_of(CHANNEL)
    node_instance = master.client().pubsub()
    node_instance.subscribe(CHANNEL)
    assert node_instance.get_message(timeout=5)["type"] == "subscribe"

    context.hub.emit("RUN-1", "log", {"message": "[2026-01-01T00:00:00.000Z] python"})
    frame = await on_a.next_frame(10.0)
    assert split_frame(frame)[1] == b'data: {"type":"log","message":"[2026-01-01T00:00:00.000Z] python"}\n\n'
    assert master.command("PUBLISH", CHANNEL, NODE_MESSAGE) == 1  # only the Node instance listens classic
    assert node_instance.get_message(timeout=5)["data"] == NODE_MESSAGE  # the first it got: ours never came

    context.hub.emit("RUN-1", "log", {"message": "[2026-01-01T00:00:00.000Z] after"})
    frame = await on_a.next_frame(10.0)  # the next frame after Node's publish is ours: Node's was not relayed
    assert split_frame(frame)[1] == b'data: {"type":"log","message":"[2026-01-01T00:00:00.000Z] after"}\n\n'
    node_instance.close()


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
        port, context, redis_cluster):  # noqa: F811
    assert await context.bus.wait_connected(10.0)
    response = await open_request(port, "/readyz")
    assert (response.status, await response.read_json()) == (200, {"status": "ready"})
    context.settings = context.settings.replace(metrics_token=METRICS_TOKEN)
    samples = await scrape(port)
    shards = {labels: value for (name, labels), value in samples.items() if name == "sentri_relay_shard_connected"}
    assert shards == {(("node", f"127.0.0.1:{node.port}"),): 1.0 for node in redis_cluster.masters()}
    assert samples[("sentri_relay_connected", ())] == 1.0


@pytest.mark.gen_test(timeout=60)
async def test_a_revocation_key_on_its_shard_refuses_a_connect_and_a_classic_notice_closes_open_streams(
        port, context, world, redis_cluster):  # noqa: F811
    assert await context.bus.wait_connected(10.0)
    token = token_for(world.user, "WS-1")
    jti = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])["jti"]
    opened = await open_live(port, world, path=world.events_path(token=token))
    # Node revokes on a cluster as on one Redis: the key (on its slot's master), then a classic notice.
    key = REVOKED_KEY_PREFIX + jti
    with redis_cluster.master_of(key).client() as client:
        client.set(key, "1", ex=60)
    redis_cluster.nodes[2].command("PUBLISH", "sentri:token:revoked", json.dumps({"jti": jti}))
    assert await opened.server_closed(timeout=10.0)
    context.revocations._remembered.clear()  # now only the key, read on its master, can refuse the connect
    refused = await open_request(port, world.events_path(token=token))
    assert refused.status == 401
    with redis_cluster.master_of(key).client() as client:
        client.delete(key)


def test_sentri_emit_publishes_on_the_runs_master_whichever_node_it_is_given(redis_cluster):  # noqa: F811
    other = next(node for node in redis_cluster.masters() if node is not redis_cluster.master_of(CHANNEL))
    result = sentri_emit("RUN-1", "log", '{"message":"[2026-01-01T00:00:00.000Z] from emit"}', redis_url=other.url)
    assert (result.returncode, result.stderr) == (0, b"")
    printed = re.fullmatch(rb"published log on run RUN-1 as ([0-9]+-[0-9]+); 0 instance\(s\) listening\n",
                           result.stdout)
    assert printed is not None, result.stdout
    with redis_cluster.master_of(CHANNEL).client() as client:
        rows = client.xrange(cluster_keys("RUN-1").stream)
    assert [(event_id, fields[b"d"]) for event_id, fields in rows] == [
        (printed.group(1), b'{"type":"log","message":"[2026-01-01T00:00:00.000Z] from emit"}')]


@pytest.mark.gen_test(timeout=60)
async def test_runs_in_different_slots_of_one_master_are_all_subscribed_and_each_gets_its_events(
        port, context, world, rows, redis_cluster, expect_log):  # noqa: F811
    # SSUBSCRIBE takes several channels in one command only when they share a slot: runs that
    # share a master but not a slot must still all be subscribed (one command per slot).
    master = redis_cluster.master_of(CHANNEL)
    run_ids = [run_id for run_id in (f"RUN-{n}" for n in range(2, 200))
               if redis_cluster.master_of(f"sentri:run:{run_id}") is master][:3]
    assert len({cluster_keys(run_id).slot for run_id in ["RUN-1", *run_ids]}) == 4
    for run_id in run_ids:
        rows.run(world.project, id=run_id)
    assert await context.bus.wait_connected(10.0)
    streams = {run_id: await open_live(port, world, path=world.events_path(run_id)) for run_id in ["RUN-1", *run_ids]}
    connects = context.bus.connects
    for run_id in streams:
        await wait_until(lambda run_id=run_id: redis_cluster.shard_subscribers(f"sentri:run:{run_id}") == 1,
                         what=f"{run_id} subscribed on its master")
    # A reconnect subscribes every wanted run at once: the batch that must be split by slot.
    expect_log("sentri.relay", r"relay lost redis at 127\.0\.0\.1:\d+ .*; reconnecting")
    # On a loaded machine a reconnect attempt can time out before one succeeds (seen in CI).
    expect_log("sentri.relay", r"relay cannot reach redis at 127\.0\.0\.1:\d+ .*; retrying", required=False)
    master.command("CLIENT", "KILL", "TYPE", "pubsub")
    await wait_until(lambda: context.bus.connects > connects and context.bus.connected, what="the relay reconnected")
    for run_id in streams:
        await wait_until(lambda run_id=run_id: redis_cluster.shard_subscribers(f"sentri:run:{run_id}") == 1,
                         what=f"{run_id} subscribed again on its master")
    publisher = RunEventPublisher(redis_cluster.nodes[1].url)
    try:
        for run_id in streams:
            publisher.publish(run_id, "log", {"message": f"to {run_id}"})
    finally:
        publisher.close()
    for run_id, response in streams.items():
        _, data = split_frame(await response.next_frame(10.0))
        assert data == f'data: {{"type":"log","message":"to {run_id}"}}\n\n'.encode()
    try:
        with redis_cluster.master_of(CHANNEL).client() as client:
            for run_id in run_ids:  # one key a command: they are in different slots
                client.delete(cluster_keys(run_id).stream)
    finally:
        for response in streams.values():
            response.close()


@pytest.mark.gen_test(timeout=60)
async def test_an_instance_keeps_its_classic_connection_on_the_master_its_id_picks(
        context, redis_cluster):  # noqa: F811
    # Classic messages reach every node: instances spread their classic connection over the
    # masters by their id instead of all delivering from the first.
    assert await context.bus.wait_connected(10.0)
    masters = context.bus.slot_map.masters
    chosen = masters[zlib.crc32(context.instance_id.encode()) % len(masters)]
    subscribed = {node.address: int(node.command("PUBSUB", "NUMSUB", "sentri:token:revoked")[1])
                  for node in redis_cluster.masters()}
    assert subscribed == {address: int(address == str(chosen)) for address in subscribed}


@pytest.mark.gen_test(timeout=60)
async def test_a_channel_wanted_again_while_the_relay_unsubscribes_the_left_runs_slot_by_slot_is_never_unsubscribed(
        context, redis_cluster, monkeypatch):  # noqa: F811
    bus = context.bus
    assert await bus.wait_connected(10.0)
    # Three slots: an SUNSUBSCRIBE each.
    unsubscribed = await all_leave_and_the_last_comes_back(bus, monkeypatch, ["LEFT-1", "LEFT-2", "LEFT-3"])
    # LEFT-1's goes first (the first left channel's master, then its slot): LEFT-3 is not first.
    assert sorted(unsubscribed) == [["sentri:run:LEFT-1"], ["sentri:run:LEFT-2"]]
    assert redis_cluster.shard_subscribers("sentri:run:LEFT-3") == 1
    assert "sentri:run:LEFT-3" in bus._confirmed
