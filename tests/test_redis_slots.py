"""Cluster addressing without a cluster (sentri.redis_slots): seeds, key names, the slot map. Pure."""

from __future__ import annotations

import pytest

from sentri.redis_history import PublishCall
from sentri.redis_slots import (
    REPLICA_CONFIRM_TIMEOUT_MS,
    UNCONFIRMING_PAUSE_S,
    Node,
    ReplicaConfirmations,
    SlotMap,
    cluster_keys,
    key_slot,
    node_url,
    other_master,
    seed_urls,
    slot_tags,
    still_owner,
)


@pytest.mark.parametrize("url, seeds", [
    ("redis://127.0.0.1:7000/0", ["redis://127.0.0.1:7000/0"]),
    ("redis://:pw@10.0.0.1:7000, 10.0.0.2:7001,10.0.0.3",
     ["redis://:pw@10.0.0.1:7000", "redis://:pw@10.0.0.2:7001", "redis://:pw@10.0.0.3:6379"]),
    ("rediss://u:pw@a:7000?ssl_cert_reqs=none,rediss://b:7001", ["rediss://u:pw@a:7000?ssl_cert_reqs=none",
                                                                 "rediss://b:7001"]),
])
def test_a_redis_url_may_list_seed_nodes_that_share_the_first_ones_scheme_and_password(url, seeds):
    assert seed_urls(url) == seeds


def test_a_node_url_keeps_the_credentials_and_query_and_brackets_an_ipv6_host():
    assert node_url("rediss://u:pw@a:7000/0?x=1", "::1", 7005) == "rediss://u:pw@[::1]:7005?x=1"


def test_the_slot_is_redis_cluster_hashing_with_hash_tags():
    # Values from Redis's own CLUSTER KEYSLOT.
    assert key_slot("foo") == 12182
    assert key_slot("{user1000}.following") == key_slot("user1000") == 3443
    assert key_slot("foo{}{bar}") == 8363  # an empty tag is no tag: the whole name is hashed


def test_every_slot_has_a_short_tag_hashing_to_it():
    tags = slot_tags()
    assert len(tags) == 16384
    assert all(key_slot(tag) == slot for slot, tag in enumerate(tags))
    assert max(len(tag) for tag in tags) <= 4


@pytest.mark.parametrize("run_id, stream", [
    ("RUN-1", "sentri:events:{sentri:run:RUN-1}"),
    ("a{b}c", "sentri:events:{b}:a{b}c"),  # the channel's own tag {b}: the readable name would hash elsewhere
    ("x}y", None),
])
def test_a_runs_keys_all_hash_to_the_slot_of_its_channel(run_id, stream):
    keys = cluster_keys(run_id)
    assert keys.channel == "sentri:run:" + run_id
    assert keys.slot == key_slot(keys.channel)
    assert key_slot(keys.stream) == key_slot(keys.sequence) == keys.slot
    assert keys.sequence == "sentri:events:seq:{" + slot_tags()[keys.slot] + "}"
    if stream is not None:
        assert keys.stream == stream


def test_the_cluster_publish_call_adds_the_slot_and_the_compatibility_flag():
    call = PublishCall("py_1", 1000, 600.0, 86400.0, cluster=True, node_compat=True)
    keys, args = call("RUN-1", b'{"type":"log"}', False)
    names = cluster_keys("RUN-1")
    assert keys == [names.stream, names.channel, names.sequence]
    assert args[-2:] == [names.slot, "1"]
    single = PublishCall("py_1", 1000, 600.0, 86400.0)
    assert single("RUN-1", b'{"type":"log"}', False)[0] == ["sentri:events:RUN-1", "sentri:run:RUN-1",
                                                            "sentri:events:seq"]


def test_the_slot_map_reads_cluster_slots_and_knows_when_a_slot_has_no_master():
    answer = [[0, 8191, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
              [8192, 16382, [b"", 7001, b"id2"]]]
    slot_map = SlotMap.from_cluster_slots(answer, asked=Node("10.0.0.9", 7009))
    assert [str(node) for node in slot_map.masters] == ["10.0.0.1:7000", "10.0.0.9:7001"]  # "": the node asked
    assert [str(node) for node in slot_map.replicas] == ["10.0.0.4:7003"]
    assert str(slot_map.owner(0)) == "10.0.0.1:7000"
    assert slot_map.owner(16383) is None
    assert not slot_map.covered
    assert slot_map.replica_counts == {Node("10.0.0.1", 7000): 1, Node("10.0.0.9", 7001): 0}


SLOTS_ANSWER = [[0, 8191, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
                [8192, 16383, [b"10.0.0.2", 7001, b"id2"]]]
FIRST, SECOND = Node("10.0.0.1", 7000), Node("10.0.0.2", 7001)


def test_a_publish_waits_for_a_replica_only_on_a_master_that_has_one_and_not_again_soon_after_one_did_not_confirm():
    now = [100.0]
    confirmations = ReplicaConfirmations(clock=lambda: now[0])
    slot_map = SlotMap.from_cluster_slots(SLOTS_ANSWER, asked=FIRST)
    assert confirmations.wait_command(slot_map, FIRST) == ("WAIT", 1, REPLICA_CONFIRM_TIMEOUT_MS)
    assert confirmations.wait_command(slot_map, SECOND) is None  # no replica
    assert confirmations.wait_command(None, None) is None  # a single Redis

    assert not confirmations.answers_stand(FIRST, [0], SECOND, None)  # the other master could not say
    assert confirmations.wait_command(slot_map, FIRST) == ("WAIT", 1, REPLICA_CONFIRM_TIMEOUT_MS)
    assert confirmations.answers_stand(FIRST, [0], SECOND, SLOTS_ANSWER)
    now[0] += UNCONFIRMING_PAUSE_S - 0.1
    assert confirmations.wait_command(slot_map, FIRST) is None
    now[0] += 0.1
    assert confirmations.wait_command(slot_map, FIRST) == ("WAIT", 1, REPLICA_CONFIRM_TIMEOUT_MS)


def test_another_masters_slot_map_says_whether_a_node_still_serves_the_slots_it_published_in():
    slot_map = SlotMap.from_cluster_slots(SLOTS_ANSWER, asked=FIRST)
    assert other_master(slot_map, FIRST) == SECOND
    assert other_master(SlotMap.from_cluster_slots(SLOTS_ANSWER[:1], asked=FIRST), FIRST) is None
    after_failover = [[0, 8191, [b"10.0.0.4", 7003, b"id4"]], SLOTS_ANSWER[1]]
    assert still_owner(FIRST, [0, 8191], SECOND, SLOTS_ANSWER)
    assert not still_owner(FIRST, [0], SECOND, after_failover)
    assert not still_owner(FIRST, [0, 8192], SECOND, SLOTS_ANSWER)
