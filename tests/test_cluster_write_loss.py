"""Redis Cluster's write-loss window (``sentri.redis_slots.REPLICA_CONFIRM_TIMEOUT_MS``): a master
paused past the node timeout, whose replica took over, runs the publish that waited in its socket
when it comes back, answers it with an id, and the cluster then throws that write away. A
publish on a master with a replica is trusted once a replica confirmed it (``WAIT``), or once
another master says the node still serves the slot; otherwise it fails, to be sent again.
The same master also ``SPUBLISH``es that write to the instances still subscribed on it: what a
master sends after a silence is read once another master vouches for it
(``sentri.bus.cluster.VOUCH_AFTER_SILENCE_S``), else the session ends unread.

Each test has a cluster of its own (it pauses its nodes)."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest
import redis
import redis.asyncio

from sentri.bus import cluster as relay_cluster
from sentri.redis_slots import UnconfirmedPublishError, cluster_keys, key_slot
from sentri.worker_publisher import RunEventPublisher

from .frames import open_live
from .redis_cluster import redis_cluster_own, wait_for  # noqa: F401 (fixture)

CHANNEL = "sentri:run:RUN-7"
LINE = {"message": "[2026-01-01T00:00:00.000Z] one"}


def history_ids(cluster, run_id: str = "RUN-7") -> list:
    with cluster.master_of(f"sentri:run:{run_id}").client() as client:
        return [entry_id.decode() for entry_id, _ in client.xrange(cluster_keys(run_id).stream)]


def waits_answered(node) -> int:
    stats = node.client().info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


def test_with_the_replica_paused_a_publish_is_kept_once_the_other_masters_say_its_master_still_serves_the_slot(
        redis_cluster_own):  # noqa: F811
    cluster = redis_cluster_own
    master = cluster.master_of(CHANNEL)
    replica = cluster.replica_of(master)
    publisher = RunEventPublisher(cluster.seeds(0), timeout_s=5.0)
    try:
        first_id, _ = publisher.publish("RUN-7", "log", LINE)
        assert waits_answered(master) == 1  # the replica confirmed it
        replica.pause()
        try:
            second_id, _ = publisher.publish("RUN-7", "log", LINE)  # no confirmation: the owner is asked
        finally:
            replica.resume()
    finally:
        publisher.close()

    assert waits_answered(master) == 2
    assert history_ids(cluster) == [first_id, second_id]


def cluster_slots_after_a_failover(real_answer, slot: int, new_owner) -> list:
    """``CLUSTER SLOTS`` as a master answers it once ``new_owner`` took ``slot``'s range over."""
    return [[row[0], row[1], [b"127.0.0.1", new_owner.port, b"0" * 40], *row[3:]] if row[0] <= slot <= row[1]
            else row for row in real_answer]


def test_a_publish_no_replica_confirmed_on_a_master_the_others_call_replaced_fails_and_the_map_is_asked_again(
        redis_cluster_own, monkeypatch):  # noqa: F811
    # The failover itself is faked: a real replaced master learns it within milliseconds of coming
    # back, before or after running what waited in its socket (the soak saw both); here the
    # others' answer says so and the real replica, paused, confirms nothing.
    cluster = redis_cluster_own
    publisher = RunEventPublisher(cluster.seeds(0), timeout_s=5.0)
    try:
        publisher.publish("RUN-7", "log", LINE)  # the slot map is known
        replica = cluster.replica_of(cluster.master_of(CHANNEL))
        real_execute = redis.Redis.execute_command

        def execute(client, *args, **options):
            answer = real_execute(client, *args, **options)
            return cluster_slots_after_a_failover(answer, key_slot(CHANNEL), replica) \
                if args == ("CLUSTER", "SLOTS") else answer

        monkeypatch.setattr(redis.Redis, "execute_command", execute)
        replica.pause()
        try:
            with pytest.raises(UnconfirmedPublishError, match=r"no replica of 127\.0\.0\.1:\d+ confirmed the publish "
                                                              r"and it no longer serves the run's slot: publish again"):
                publisher.publish("RUN-7", "log", LINE)
        finally:
            replica.resume()
        assert publisher._router.is_cluster is None  # the slot map is asked again before the next publish
    finally:
        publisher.close()


# -- the relay's own publishes (sentri.bus.cluster) ---------------------------------------------


@pytest.fixture
def settings(settings, redis_cluster_own):  # noqa: F811 - instance A on the run's master
    return settings.replace(redis_url=redis_cluster_own.master_of(CHANNEL).url, relay_retry_max_s=0.2, retry_ms=0)


async def wait_until(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s}s"
        await asyncio.sleep(0.02)


def the_others_say_once_that_it_moved(monkeypatch, channel: str, new_owner) -> list:
    """The next ``CLUSTER SLOTS`` the relay asks says ``channel``'s slot moved to ``new_owner``:
    the failover is faked, once; the answers it replaced are listed in what this returns."""
    real_execute = redis.asyncio.Redis.execute_command
    faked: list = []

    async def execute(client, *args, **options):
        answer = await real_execute(client, *args, **options)
        if args == ("CLUSTER", "SLOTS") and not faked:
            faked.append(answer)
            return cluster_slots_after_a_failover(answer, key_slot(channel), new_owner)
        return answer

    monkeypatch.setattr(redis.asyncio.Redis, "execute_command", execute)
    return faked


@pytest.mark.gen_test(timeout=60)
async def test_the_relay_keeps_a_publish_its_paused_replica_did_not_confirm_while_its_master_still_serves_the_slot(
        port, context, world, redis_cluster_own):  # noqa: F811
    cluster = redis_cluster_own
    assert await context.bus.wait_connected(10.0)
    master = cluster.master_of(CHANNEL)
    replica = cluster.replica_of(master)
    connects, waits = context.bus.connects, waits_answered(master)
    replica.pause()
    try:
        context.hub.emit("RUN-7", "log", LINE)
        await wait_until(lambda: history_ids(cluster), "the event in history")
    finally:
        replica.resume()

    assert waits_answered(master) == waits + 1
    assert len(history_ids(cluster)) == 1
    assert context.bus.connects == connects  # the session went on


@pytest.mark.gen_test(timeout=60)
async def test_the_relay_publishes_again_what_no_replica_confirmed_on_a_master_the_others_call_replaced(
        port, context, world, redis_cluster_own, monkeypatch, expect_log):  # noqa: F811
    expect_log("sentri.relay", r"relay lost redis at .*\(ClusterChangedError: no replica of 127\.0\.0\.1:\d+ "
                               r"confirmed a publish and it no longer serves the slot\)")
    cluster = redis_cluster_own
    assert await context.bus.wait_connected(10.0)
    replica = cluster.replica_of(cluster.master_of(CHANNEL))
    connects = context.bus.connects
    the_others_say_once_that_it_moved(monkeypatch, CHANNEL, replica)
    replica.pause()
    try:
        context.hub.emit("RUN-7", "log", LINE)
        await wait_until(lambda: len(history_ids(cluster)) == 2, "the event published again")
    finally:
        replica.resume()

    assert context.bus.connects == connects + 1  # a new session on the (real) slot map
    with cluster.master_of(CHANNEL).client() as client:
        origins = [fields[b"o"].decode() for _, fields in client.xrange(cluster_keys("RUN-7").stream)]
    # The first write stands here (no real failover threw it away); the second is the same event
    # put back, delivered here and published again, as after any publish Redis may not have run.
    assert origins == [context.instance_id, f"{context.instance_id}|local"]


# -- what a master sends after a silence (sentri.bus.cluster.VOUCH_AFTER_SILENCE_S) ---------------

LIVE_CHANNEL = "sentri:run:RUN-1"  # the world's run, streamed by open_live
# Published by "another instance" into the paused master's socket: an id no history holds, as
# the doomed writes of a replaced master.
DOOMED = b'{"type":"log","message":"[2026-01-01T00:00:00.000Z] doomed","_origin":"elsewhere|9999999999999-9999"}'
PAUSE_S = 0.8  # under the test cluster's node timeout (1 s): no real failover


def spublish_into_the_paused_master(master) -> socket.socket:
    """A raw ``SPUBLISH`` that waits in the paused master's socket and runs when it comes back."""
    command = [b"SPUBLISH", LIVE_CHANNEL.encode(), DOOMED]
    sock = socket.create_connection(("127.0.0.1", master.port), timeout=5)
    sock.sendall(b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in command))
    return sock


async def pause_and_spublish(cluster) -> None:
    master = cluster.master_of(LIVE_CHANNEL)
    master.pause()
    try:
        await asyncio.sleep(PAUSE_S / 2)
        sock = spublish_into_the_paused_master(master)
        await asyncio.sleep(PAUSE_S / 2)
    finally:
        master.resume()
    await asyncio.get_running_loop().run_in_executor(None, sock.recv, 100)  # it ran: ":<receivers>"
    sock.close()


@pytest.fixture
def vouch_after_short_silences(monkeypatch):
    # Shorter than PAUSE_S less a probe interval, with room for a loaded machine's late timers.
    monkeypatch.setattr(relay_cluster, "VOUCH_AFTER_SILENCE_S", 0.3)


@pytest.mark.gen_test(timeout=60)
async def test_what_a_master_sends_after_a_silence_reaches_listeners_once_another_master_says_it_still_serves_the_slot(
        port, context, world, redis_cluster_own, vouch_after_short_silences, caplog):  # noqa: F811
    cluster = redis_cluster_own
    assert await context.bus.wait_connected(10.0)
    listener = await open_live(port, world)
    await wait_until(lambda: cluster.shard_subscribers(LIVE_CHANNEL) == 1, "the run's channel subscribed")
    connects = context.bus.connects

    with caplog.at_level("INFO", logger="sentri.relay"):
        await pause_and_spublish(cluster)
        assert await listener.next_frame(10.0) == (
            b'id: 9999999999999-9999\n'
            b'data: {"type":"log","message":"[2026-01-01T00:00:00.000Z] doomed"}\n\n')

    assert context.bus.connects == connects  # the session went on
    vouched = [record.getMessage() for record in caplog.records if "answered nothing" in record.getMessage()]
    assert len(vouched) == 1
    assert re.fullmatch(rf"relay: redis {re.escape(cluster.master_of(LIVE_CHANNEL).address)} answered nothing for "
                        r"0\.\d s; 127\.0\.0\.1:\d+ says it still serves its slots", vouched[0]), vouched


@pytest.mark.gen_test(timeout=60)
async def test_what_a_master_sends_after_a_silence_is_never_delivered_when_another_master_says_it_was_replaced(
        port, context, world, redis_cluster_own, vouch_after_short_silences, monkeypatch, expect_log):  # noqa: F811
    expect_log("sentri.relay", r"relay lost redis at .*\(ClusterChangedError: 127\.0\.0\.1:\d+ answered nothing "
                               r"for \d\.\d s and 127\.0\.0\.1:\d+ says it no longer serves its slots\)")
    cluster = redis_cluster_own
    assert await context.bus.wait_connected(10.0)
    listener = await open_live(port, world)
    await wait_until(lambda: cluster.shard_subscribers(LIVE_CHANNEL) == 1, "the run's channel subscribed")
    connects = context.bus.connects
    replica = cluster.replica_of(cluster.master_of(LIVE_CHANNEL))
    faked = the_others_say_once_that_it_moved(monkeypatch, LIVE_CHANNEL, replica)
    await pause_and_spublish(cluster)
    await wait_until(lambda: context.bus.connects == connects + 1, "a new session on the (real) slot map")
    assert faked  # the vouch asked
    await wait_until(lambda: cluster.shard_subscribers(LIVE_CHANNEL) == 1, "the run's channel subscribed again")

    context.hub.emit("RUN-1", "log", {"message": "[2026-01-01T00:00:00.000Z] after"})
    event_id, _, data = (await listener.next_frame(10.0)).partition(b"\n")
    assert data == b'data: {"type":"log","message":"[2026-01-01T00:00:00.000Z] after"}\n\n'
    assert event_id == b"id: " + history_ids(cluster, "RUN-1")[-1].encode()  # not the doomed id before it

