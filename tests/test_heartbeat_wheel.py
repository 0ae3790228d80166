"""The heartbeat wheel keeps every stream's heartbeat when the IOLoop stalls (no slot is skipped)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import List, Tuple

import pytest

from sentri import sse
from sentri.hub import WHEEL_SLOTS, Hub


async def open_streams(hub: Hub, count: int) -> List[Tuple[socket.socket, socket.socket]]:
    pairs = []
    for n in range(count):
        server_end, client_end = socket.socketpair()
        server_end.setblocking(False)
        client_end.setblocking(False)
        stream = hub.reserve(f"run-{n}")
        assert stream is not None
        stream.attach_socket(server_end, chunked=False)
        hub.open(stream, b"")
        # One stream per tick, so the streams sit in different slots of the turning wheel.
        await asyncio.sleep(1.0 / WHEEL_SLOTS)
        pairs.append((server_end, client_end))
    return pairs


def heartbeats(client_end: socket.socket) -> int:
    try:
        data = client_end.recv(65536)
    except BlockingIOError:
        return 0
    assert data.replace(sse.HEARTBEAT, b"") == b""
    return data.count(sse.HEARTBEAT)


@pytest.mark.gen_test(timeout=15)
async def test_a_loop_stalled_for_several_ticks_still_gives_every_stream_its_heartbeat() -> None:
    hub = Hub(heartbeat_interval_s=1.0, max_listeners_per_run=10, max_writable_bytes=1 << 20)
    hub.start()
    pairs = await open_streams(hub, WHEEL_SLOTS)
    try:
        for _, client_end in pairs:
            heartbeats(client_end)  # drop what came before the measured window
        started = time.monotonic()
        time.sleep(0.55)  # the loop is blocked for five or six 100 ms ticks
        await asyncio.sleep(2.05 - (time.monotonic() - started))
        counts = [heartbeats(client_end) for _, client_end in pairs]
    finally:
        hub.stop()
        for stream in list(hub.streams()):
            stream.close("test_teardown")  # closes the server ends
        for _, client_end in pairs:
            client_end.close()
    # Two intervals went by: every stream got two heartbeats (a third at most, at the edge),
    # including the streams whose slots came due while the loop was blocked.
    assert all(count in (2, 3) for count in counts), counts
