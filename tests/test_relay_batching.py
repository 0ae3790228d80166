"""Relayed messages that one socket read brings in reach each listener in one write, in
order, byte for byte as one by one."""

from __future__ import annotations

import pytest

from .frames import open_live
from .redis_server import FAST_RELAY, redis_server  # noqa: F401 (fixtures)
from .test_batched_writes import CountingSocket

CHANNEL = "sentri:run:RUN-1"


@pytest.fixture
def settings(settings, redis_server):  # noqa: F811 - this instance relays through Redis
    return settings.replace(redis_url=redis_server.url, **FAST_RELAY)


@pytest.mark.gen_test(timeout=30)
async def test_messages_read_together_go_to_a_listener_in_one_write(port, context, world, redis_server):  # noqa: F811
    assert await context.bus.wait_connected(5.0)
    response = await open_live(port, world)
    [stream] = context.hub.runs["RUN-1"]
    counter = CountingSocket(stream.sock)
    stream.sock = counter
    try:
        messages = [b'{"type":"llm_token","token":"t%d","_origin":"inst_node_1"}' % n for n in range(30)]
        with redis_server.client() as client:
            pipe = client.pipeline(transaction=True)  # MULTI/EXEC: Redis sends the 30 messages at once
            for message in messages:
                pipe.publish(CHANNEL, message)
            pipe.execute()
        frames = [await response.next_frame() for _ in messages]
        assert frames == [b'data: {"type":"llm_token","token":"t%d"}\n\n' % n for n in range(30)]
        assert 1 <= len(counter.sends) < 30, counter.sends
    finally:
        stream.sock = counter.sock
