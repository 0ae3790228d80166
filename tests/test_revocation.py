"""Token revocation through Redis (docs/auth.md §4): a revoked jti is refused at connect, and its
open streams are closed within a second of the notice on ``sentri:token:revoked``."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import jwt
import pytest

from sentri.bus import Bus
from sentri.redis_history import RedisHistory
from sentri.revocation import NOT_REVOKED_MAX_AGE_S, RedisRevocations, make_revocations
from sentri.stream import CloseReason

from .conftest import JWT_SECRET, token_for
from .hubwatch import HubWatch
from .redis_server import private_redis, redis_server  # noqa: F401 (fixture)
from .services import free_port
from .sseclient import open_request
from .test_relay import without_id


def jti_of(token):
    return jwt.decode(token, JWT_SECRET, algorithms=["HS256"])["jti"]


def revoke(redis_server, token):  # noqa: F811
    """What the Node backend does on logout: the key (with a TTL), then the notice."""
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    client = redis_server.client()
    client.set(f"sentri:revoked:{claims['jti']}", "1", ex=3600)
    client.publish("sentri:token:revoked", json.dumps({"jti": claims["jti"], "exp": claims["exp"]}))
    client.close()


@pytest.fixture
def settings(settings, redis_server):  # noqa: F811
    return settings.replace(redis_url=redis_server.url, retry_ms=0)



@pytest.mark.gen_test(timeout=30)
async def test_a_revocation_closes_every_open_stream_of_that_token_within_a_second_and_only_those(
        port, context, world, redis_server):  # noqa: F811
    assert await context.bus.wait_connected(5.0)
    watch = HubWatch(context.hub)
    revoked = [await open_request(port, world.events_path()) for _ in range(2)]
    other_token = token_for(world.user, "WS-1")
    kept = await open_request(port, world.events_path(token=other_token))
    for response in (*revoked, kept):
        assert (await response.next_event())["type"] == "snapshot"

    started = time.monotonic()
    revoke(redis_server, world.token)
    for response in revoked:
        assert await response.server_closed(timeout=1.0)
    assert time.monotonic() - started < 1.0
    await watch.until(lambda: len(watch.closed) == 2)
    assert {stream.close_reason for stream in watch.closed} == {CloseReason.REVOKED}

    context.hub.emit("RUN-1", "log", {"message": "still here"})
    assert without_id(await kept.next_frame()) == b'data: {"type":"log","message":"still here"}\n\n'


@pytest.mark.gen_test(timeout=30)
async def test_a_revoked_token_is_refused_at_connect(port, context, world, redis_server):  # noqa: F811
    revoke(redis_server, world.token)
    response = await open_request(port, world.events_path())
    assert response.status == 401
    assert await response.read_json() == {"error": "Authentication required."}
    assert context.hub.runs == {}


@pytest.mark.gen_test(timeout=30)
async def test_a_revocation_key_set_without_a_notice_is_still_refused(port, context, world, redis_server):  # noqa: F811
    client = redis_server.client()
    client.set(f"sentri:revoked:{jti_of(world.token)}", "1", ex=60)
    client.close()
    response = await open_request(port, world.events_path())
    assert response.status == 401


@pytest.mark.gen_test(timeout=30)
async def test_with_redis_down_tokens_are_accepted_and_the_outage_is_logged_once(
        port, context, world, redis_server, expect_log):  # noqa: F811
    expect_log("sentri.relay", r"relay (lost|cannot reach) redis")
    history_down = expect_log("sentri.resume", r"history unavailable, sending snapshots until it answers")
    with expect_log("sentri.revocation", r"revocation check unavailable") as unavailable:
        redis_server.stop()
        for _ in range(3):
            response = await open_request(port, world.events_path())
            assert response.status == 200
            assert (await response.next_event())["type"] == "snapshot"
    assert unavailable.matched == 1
    assert history_down.matched == 1


@pytest.fixture
def own_redis(tmp_path):
    """A Redis that is not the app's (not started yet): stopping it leaves the app's relay alone."""
    with private_redis(tmp_path / "own-redis") as server:
        yield server


@pytest.mark.gen_test(timeout=30)
async def test_a_remembered_notice_refuses_the_token_without_asking_redis(own_redis, expect_log):
    revocations = RedisRevocations(own_redis.url, timeout_s=0.5)  # nothing listens there yet
    revocations.remember("jti-1", time.time() + 60)
    revocations.remember("jti-2", None)  # no exp: remembered for an hour
    try:
        assert await revocations.is_revoked("jti-1") is True  # no warning: Redis was not asked
        assert await revocations.is_revoked("jti-2") is True
        with expect_log("sentri.revocation", r"revocation check unavailable \(ConnectionError\)"):
            assert await revocations.is_revoked("jti-3") is False
    finally:
        await revocations.close()


def test_remembered_notices_past_their_expiry_are_pruned_beyond_1024():
    revocations = RedisRevocations("redis://127.0.0.1:1/0")
    now = time.time()
    for number in range(999):
        revocations.remember(f"old-{number}", now - 1)
    for number in range(25):
        revocations.remember(f"live-{number}", now + 60)
    assert len(revocations._remembered) == 1024  # at the bound: nothing pruned yet
    revocations.remember("live-last", now + 60)
    assert sorted(revocations._remembered) == sorted([f"live-{number}" for number in range(25)] + ["live-last"])


@pytest.mark.gen_test(timeout=30)
async def test_the_check_says_once_when_redis_answers_again_and_works_after_close(
        own_redis, expect_log, caplog):
    revocations = RedisRevocations(own_redis.url, timeout_s=0.5)
    await revocations.close()  # nothing opened yet: nothing to close
    try:
        with expect_log("sentri.revocation", r"revocation check unavailable"):
            assert await revocations.is_revoked("jti-1") is False
        own_redis.start()
        client = own_redis.client()
        client.set("sentri:revoked:jti-1", "1", ex=60)
        client.close()
        caplog.set_level(logging.INFO, logger="sentri.revocation")
        assert await revocations.is_revoked("jti-1") is True
        assert await revocations.is_revoked("jti-2") is False
        assert [(record.levelno, record.getMessage()) for record in caplog.records
                if record.name == "sentri.revocation"] == [
            (logging.WARNING, "revocation check unavailable (ConnectionError); accepting tokens unchecked "
                              "until redis answers"),
            (logging.INFO, "revocation check available again")]
        await revocations.close()
        assert await revocations.is_revoked("jti-1") is True  # a new connection after close
    finally:
        await revocations.close()


def test_with_redis_but_a_bus_without_notices_revocations_are_still_checked_in_redis(settings, redis_server):  # noqa: F811
    bus = Bus()
    revocations = make_revocations(settings, bus)
    assert isinstance(revocations, RedisRevocations)
    assert revocations.redis_url == redis_server.url
    assert not hasattr(bus, "revocation_callbacks")


@pytest.mark.gen_test(timeout=30)
async def test_a_not_revoked_answer_is_reused_for_at_most_a_second_then_the_key_refuses(
        port, context, world, redis_server):  # noqa: F811
    first = await open_request(port, world.events_path())
    assert first.status == 200  # Redis said "not revoked": reused by connects within the bound
    client = redis_server.client()
    client.set(f"sentri:revoked:{jti_of(world.token)}", "1", ex=60)  # no notice
    client.close()
    await asyncio.sleep(NOT_REVOKED_MAX_AGE_S + 0.2)
    response = await open_request(port, world.events_path())
    assert response.status == 401


@pytest.mark.gen_test(timeout=30)
async def test_a_notice_refuses_the_token_at_once_despite_a_reused_not_revoked_answer(
        port, context, world, redis_server):  # noqa: F811
    assert await context.bus.wait_connected(5.0)
    first = await open_request(port, world.events_path())
    assert (await first.next_event())["type"] == "snapshot"
    revoke(redis_server, world.token)
    assert await first.server_closed(timeout=1.0)  # the notice arrived
    response = await open_request(port, world.events_path())
    assert response.status == 401


@pytest.mark.gen_test(timeout=30)
async def test_connects_with_one_token_at_once_ask_redis_once(own_redis):
    own_redis.start()
    revocations = RedisRevocations(own_redis.url, timeout_s=0.5)
    asked = []
    try:
        router = revocations._redis()  # every EXISTS goes through the router's call
        call = router.call

        async def counting(key, command):
            asked.append(key)
            return await call(key, command)

        router.call = counting
        assert await asyncio.gather(*(revocations.is_revoked("jti-1") for _ in range(50))) == [False] * 50
        assert await revocations.is_revoked("jti-1") is False
        assert len(asked) == 1
        revocations.remember("jti-1", time.time() + 60)  # a notice overrides the reused answer
        assert await revocations.is_revoked("jti-1") is True
    finally:
        await revocations.close()


@pytest.mark.gen_test(timeout=30)
async def test_warming_up_at_start_learns_what_redis_is_before_the_first_check_and_never_fails(
        redis_server):  # noqa: F811
    # Asked by the first connects of a storm instead, the probe and the EXISTS did not fit in
    # the check's 0.5 s: the first checks of a 5,000-connect burst failed open (bench).
    warmed = RedisRevocations(redis_server.url)
    away = RedisRevocations(f"redis://127.0.0.1:{free_port()}", timeout_s=0.2)  # nothing listens there
    try:
        assert warmed._redis().is_cluster is None
        await warmed.warm_up()
        assert warmed._redis().is_cluster is False  # one Redis: the first check goes straight to EXISTS
        history = RedisHistory(redis_server.url)  # the resume path's first read, likewise
        await history.warm_up()
        assert history._router.is_cluster is False
        await history.close()
        started = time.monotonic()
        await away.warm_up()  # Redis away at start: no error, nothing learnt, asked again on first use
        assert away._redis().is_cluster is None
        assert time.monotonic() - started < 5.0
    finally:
        await warmed.close()
        await away.close()
