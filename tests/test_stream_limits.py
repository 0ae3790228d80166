"""Bounds (docs/stream.md §10): listeners per run, and unsent bytes of a client that stops reading."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sentri.models import Run

from .frames import next_data
from .hubwatch import HubWatch
from .sseclient import open_request

CAP = 2
WRITE_BOUND = 256 * 1024
FRAME_BYTES = 64 * 1024
TOO_MANY = b'{"error":"too many SSE listeners on this run","retryAfter":5}'


@pytest.fixture
def settings(settings):
    return settings.replace(sse_max_listeners_per_run=CAP, sse_max_writable_bytes=WRITE_BOUND)


@pytest.mark.gen_test
async def test_a_listener_beyond_the_cap_gets_503_with_retry_after_and_the_others_keep_streaming(port, world,
                                                                                                 context, expect_log):
    expect_log("sentri.access", r"GET /api/v1/runs/RUN-1/events 503$")
    listeners = [await open_request(port, world.events_path()) for _ in range(CAP)]
    for listener in listeners:
        await next_data(listener)
    extra = await open_request(port, world.events_path())
    await extra.read_json()
    assert (extra.status, extra.body) == (503, TOO_MANY)
    assert extra.headers["retry-after"] == "5"
    assert extra.headers["content-type"] == "application/json; charset=utf-8"
    assert context.hub.listener_count("RUN-1") == CAP

    context.hub.emit("RUN-1", "log", {"message": "still here"})
    for listener in listeners:
        assert await next_data(listener) == b'data: {"type":"log","message":"still here"}\n\n'
    # Another run has a cap of its own.
    context.hub.emit("RUN-1", "done", {"status": "completed"})
    for listener in listeners:
        await next_data(listener)
        assert await listener.server_closed()
    again = await open_request(port, world.events_path())
    assert again.status == 200


@pytest.mark.gen_test
async def test_a_finished_run_is_still_served_when_its_listeners_are_at_the_cap(port, world, context):
    listeners = [await open_request(port, world.events_path()) for _ in range(CAP)]
    for listener in listeners:
        await next_data(listener)
    # The run ended in the database, but its done has not reached this instance yet.
    with context.store.database.connection_context():
        Run.update(status="failed", failed=1).where(Run.id == "RUN-1").execute()
    late = await open_request(port, world.events_path())
    assert late.status == 200
    assert (await next_data(late)).startswith(b'data: {"type":"snapshot"')
    assert await next_data(late) == b'data: {"type":"done","status":"failed","failed":1,"testsGenerated":0}\n\n'
    assert await late.server_closed()
    assert context.hub.listener_count("RUN-1") == CAP


async def open_never_reading_client(port, path):
    """A client with a tiny receive buffer that sends its request and then never reads."""
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(client, ("127.0.0.1", port))
    await loop.sock_sendall(client, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return client


@pytest.mark.gen_test
async def test_a_client_that_stops_reading_is_cut_off_at_the_write_bound(port, world, context):
    watch = HubWatch(context.hub)
    client = await open_never_reading_client(port, world.events_path())
    try:
        await watch.opened_count(1)
        (stream,) = context.hub.runs["RUN-1"]
        stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # keep the kernel's share small
        reader = await open_request(port, world.events_path())  # a healthy listener beside it
        await next_data(reader)

        payload = "x" * FRAME_BYTES
        most_unsent = 0
        emitted = 0
        for _ in range(200):
            emitted += 1
            context.hub.emit("RUN-1", "result", {"data": payload})
            if not stream.closed:
                most_unsent = max(most_unsent, stream.unsent_bytes)
            assert await next_data(reader) == b'data: {"type":"result","data":"' + payload.encode() + b'"}\n\n'
            if stream.closed:
                break
        assert stream.closed and stream.close_reason == "too_slow"
        assert most_unsent <= WRITE_BOUND
        assert stream.unsent is None and stream.unsent_bytes <= WRITE_BOUND + FRAME_BYTES
        assert emitted * (FRAME_BYTES + 40) < 4 * WRITE_BOUND + 512 * 1024, "cut off far later than the bound"
        assert context.hub.listener_count("RUN-1") == 1  # only the healthy listener is left
        await watch.closed_count(1)
        context.hub.emit("RUN-1", "log", {"message": "after"})
        assert await next_data(reader) == b'data: {"type":"log","message":"after"}\n\n'
    finally:
        client.close()


@pytest.mark.gen_test
async def test_a_slow_client_catches_up_once_it_reads_again(port, world, context):
    watch = HubWatch(context.hub)
    client = await open_never_reading_client(port, world.events_path())
    loop = asyncio.get_running_loop()
    try:
        await watch.opened_count(1)
        (stream,) = context.hub.runs["RUN-1"]
        stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        payload = "y" * (16 * 1024)
        for _ in range(500):  # until the kernel refuses more and the stream keeps bytes
            context.hub.emit("RUN-1", "frame", {"data": payload})
            if stream.unsent is not None:
                break
        assert 0 < stream.unsent_bytes <= WRITE_BOUND
        context.hub.emit("RUN-1", "done", {"status": "completed"})
        received = b""
        while True:
            data = await asyncio.wait_for(loop.sock_recv(client, 65536), 5)
            if not data:
                break
            received += data
        assert received.endswith(b'data: {"type":"done","status":"completed"}\n\n\r\n0\r\n\r\n')
        assert stream.closed and stream.close_reason == "done"
        assert context.hub.runs == {}
    finally:
        client.close()
