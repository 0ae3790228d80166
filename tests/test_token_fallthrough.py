"""Token sources fall through as the Node middleware's strategies do (docs/auth.md §3).

Cookie, then ``Authorization: Bearer``, then ``?token=``: a source whose token is missing or
invalid (bad signature, expired, revoked, malformed) passes to the next; 401 only when none is
valid. Of two valid tokens the earlier decides: the stream is bound to its jti.
"""

from __future__ import annotations

import itertools
import time

import pytest

from sentri.stream import CloseReason

from .conftest import token_for
from .hubwatch import HubWatch
from .redis_server import redis_server  # noqa: F401 (fixture)
from .sseclient import open_request
from .test_revocation import revoke

AUTH_REQUIRED = b'{"error":"Authentication required."}'
EVENTS = "/api/v1/runs/RUN-1/events"
SOURCES = ("cookie", "bearer", "query")
INVALID_KINDS = ("bad_signature", "expired", "revoked", "malformed")


@pytest.fixture
def settings(settings, redis_server):  # noqa: F811
    return settings.replace(redis_url=redis_server.url, retry_ms=0)


def invalid_token(kind, world, redis_server):  # noqa: F811
    if kind == "bad_signature":
        return token_for(world.user, "WS-1", secret="not-the-secret-0123456789abcdefgh")
    if kind == "expired":
        return token_for(world.user, "WS-1", lifetime_s=60, now=time.time() - 3600)
    if kind == "revoked":
        token = token_for(world.user, "WS-1")
        revoke(redis_server, token)
        return token
    return "not.a-jwt.at-all"


def request_with(tokens):
    """Path and headers carrying ``tokens`` (source -> token)."""
    headers = {}
    path = EVENTS
    if "cookie" in tokens:
        headers["Cookie"] = f"access_token={tokens['cookie']}"
    if "bearer" in tokens:
        headers["Authorization"] = f"Bearer {tokens['bearer']}"
    if "query" in tokens:
        path = f"{EVENTS}?token={tokens['query']}"
    return path, headers


async def opened(port, tokens):
    path, headers = request_with(tokens)
    return await open_request(port, path, headers=headers)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("kind", INVALID_KINDS)
@pytest.mark.parametrize("earlier,later", list(itertools.combinations(SOURCES, 2)))
async def test_an_invalid_token_in_an_earlier_source_falls_through_to_a_valid_one_in_a_later_source(
        port, context, world, redis_server, earlier, later, kind):  # noqa: F811
    assert await context.bus.wait_connected(5.0)
    response = await opened(port, {earlier: invalid_token(kind, world, redis_server), later: world.token})
    assert response.status == 200
    assert (await response.next_event())["type"] == "snapshot"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("kind", INVALID_KINDS)
@pytest.mark.parametrize("earlier,later", list(itertools.combinations(SOURCES, 2)))
async def test_a_valid_token_in_an_earlier_source_wins_over_an_invalid_later_one(
        port, context, world, redis_server, earlier, later, kind):  # noqa: F811
    assert await context.bus.wait_connected(5.0)
    response = await opened(port, {earlier: world.token, later: invalid_token(kind, world, redis_server)})
    assert response.status == 200
    assert (await response.next_event())["type"] == "snapshot"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("kinds", [("bad_signature", "expired", "revoked"), ("malformed", "revoked", "expired"),
                                   ("revoked", "malformed", "bad_signature")])
async def test_when_every_source_holds_an_invalid_token_the_answer_is_401(
        port, context, world, redis_server, kinds):  # noqa: F811
    assert await context.bus.wait_connected(5.0)
    tokens = {source: invalid_token(kind, world, redis_server) for source, kind in zip(SOURCES, kinds)}
    path, headers = request_with(tokens)
    response = await open_request(port, path, headers=headers)
    assert response.status == 401
    await response.read_json()
    assert response.body == AUTH_REQUIRED
    assert context.hub.runs == {}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("kind", INVALID_KINDS)
@pytest.mark.parametrize("source", SOURCES)
async def test_a_single_invalid_token_in_any_source_gets_401(
        port, context, world, redis_server, source, kind):  # noqa: F811
    assert await context.bus.wait_connected(5.0)
    path, headers = request_with({source: invalid_token(kind, world, redis_server)})
    response = await open_request(port, path, headers=headers)
    assert response.status == 401
    await response.read_json()
    assert response.body == AUTH_REQUIRED


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("earlier,later", list(itertools.combinations(SOURCES, 2)))
async def test_of_two_valid_tokens_the_earlier_source_binds_the_stream(
        port, context, world, redis_server, earlier, later):  # noqa: F811
    assert await context.bus.wait_connected(5.0)
    watch = HubWatch(context.hub)
    first, second = token_for(world.user, "WS-1"), token_for(world.user, "WS-1")
    response = await opened(port, {earlier: first, later: second})
    bound_to_second = await opened(port, {later: second})  # closes once the notice below is handled
    for opened_response in (response, bound_to_second):
        assert (await opened_response.next_event())["type"] == "snapshot"

    revoke(redis_server, second)  # the later token's jti binds nothing: the stream stays
    assert await bound_to_second.server_closed(timeout=2.0)
    context.hub.emit("RUN-1", "log", {"message": "still here"})
    assert (await response.next_event())["message"] == "still here"

    revoke(redis_server, first)
    assert await response.server_closed(timeout=2.0)
    await watch.until(lambda: len(watch.closed) == 2)
    assert {stream.close_reason for stream in watch.closed} == {CloseReason.REVOKED}
