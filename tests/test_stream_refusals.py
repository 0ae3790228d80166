"""A stream request refused after its listener was reserved leaves nothing behind: the
database failing, a drain starting, or the client leaving while the run is read."""

from __future__ import annotations

import asyncio
import re
import socket
import struct

import peewee
import pytest

from handlers.events_connect import RunEventsConnect
from sentri.stream import CloseReason

from .sseclient import open_request


def failing_lookup(context, monkeypatch, expect_log, run_id="RUN-1"):  # type: ignore[no-untyped-def]
    # The cause is logged (the token redacted), never sent to the client.
    path = re.escape(f"/api/v1/runs/{run_id}/events")
    expect_log("tornado.general", rf"^503 GET {path}\?token=\[redacted\] .*: stream lookup failed: OperationalError$")
    expect_log("sentri.access", rf"GET {path} 503$")
    # A database that fails on this one query: stopping the shared server would break
    # every other engineer's run, and a private one takes seconds to start.
    async def open_stream(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise peewee.OperationalError("server closed the connection unexpectedly")
    monkeypatch.setattr(context.store, "open_stream", open_stream)


def drain_begins_during_lookup(context, monkeypatch):  # type: ignore[no-untyped-def]
    lookup = context.store.open_stream

    async def drain_begins_meanwhile(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = await lookup(*args, **kwargs)
        context.draining = True
        return result
    monkeypatch.setattr(context.store, "open_stream", drain_begins_meanwhile)


@pytest.mark.gen_test
async def test_a_failed_run_lookup_is_503_and_releases_the_reserved_listener(port, world, context, monkeypatch,
                                                                              expect_log):
    failing_lookup(context, monkeypatch, expect_log)
    response = await open_request(port, world.events_path())
    assert response.status == 503
    assert await response.read_json() == {"error": "database unavailable"}
    assert b"OperationalError" not in response.body and b"closed the connection" not in response.body
    assert context.hub.runs == {}


@pytest.mark.gen_test
async def test_a_failed_run_lookup_over_the_listener_cap_is_503_too(port, world, context, monkeypatch, expect_log):
    context.hub.max_listeners_per_run = 1
    holder = context.hub.reserve("RUN-1")  # the one slot is taken: this request gets none
    failing_lookup(context, monkeypatch, expect_log)
    response = await open_request(port, world.events_path())
    assert response.status == 503
    assert await response.read_json() == {"error": "database unavailable"}
    assert context.hub.runs == {"RUN-1": {holder}}


@pytest.mark.gen_test
async def test_a_drain_that_starts_while_the_run_is_read_refuses_the_stream_with_retry_after(
        port, world, context, monkeypatch, expect_log):
    expect_log("sentri.access", r"GET /api/v1/runs/RUN-1/events 503$")
    drain_begins_during_lookup(context, monkeypatch)
    response = await open_request(port, world.events_path())
    assert response.status == 503
    assert response.headers["retry-after"] == "1"
    assert await response.read_json() == {"error": "server is shutting down", "retryAfter": 1}
    assert context.hub.runs == {}


@pytest.mark.gen_test
async def test_a_client_that_leaves_while_the_run_is_read_gets_no_stream(port, world, context, monkeypatch):
    lookup = context.store.open_stream
    asked = asyncio.Event()
    client_left = asyncio.Event()
    reserved = []
    closed = []
    reserve = context.hub.reserve
    observer_closed = context.hub.observer.stream_closed
    on_connection_close = RunEventsConnect.on_connection_close

    async def lookup_until_the_client_left(*args, **kwargs):  # type: ignore[no-untyped-def]
        asked.set()
        await client_left.wait()
        return await lookup(*args, **kwargs)

    def noticed_the_client_left(handler):  # type: ignore[no-untyped-def]
        on_connection_close(handler)
        client_left.set()

    def stream_closed(stream):  # type: ignore[no-untyped-def]
        closed.append(stream)
        observer_closed(stream)

    monkeypatch.setattr(context.store, "open_stream", lookup_until_the_client_left)
    monkeypatch.setattr(context.hub, "reserve", lambda *a, **k: reserved.append(reserve(*a, **k)) or reserved[-1])
    monkeypatch.setattr(context.hub.observer, "stream_closed", stream_closed)
    monkeypatch.setattr(RunEventsConnect, "on_connection_close", noticed_the_client_left)

    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(f"GET {world.events_path()} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await asked.wait()
    # A reset, not a FIN: the server's poll reports the connection failed at once.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    await asyncio.wait_for(client_left.wait(), 5)
    await asyncio.wait_for(until_closed(reserved), 5)
    stream = reserved[0]
    assert stream.close_reason == CloseReason.CLIENT_GONE and stream.sock is None
    assert context.hub.runs == {}
    assert closed == []  # it never went live, so it is not counted as a closed stream


async def until_closed(reserved):  # type: ignore[no-untyped-def]
    # The handler resumes once the lookup returns; nothing else signals the close.
    while not reserved[0].closed:
        await asyncio.sleep(0.01)


@pytest.mark.gen_test
async def test_a_drain_during_the_lookup_refuses_a_finished_run_request_that_got_no_listener_slot_too(
        port, world, rows, context, monkeypatch, expect_log):
    # A finished run needs no slot, so over the cap it is served, unless a drain began meanwhile.
    expect_log("sentri.access", r"GET /api/v1/runs/RUN-2/events 503$")
    rows.run(world.project, id="RUN-2", status="completed")
    context.hub.max_listeners_per_run = 1
    holder = context.hub.reserve("RUN-2")
    drain_begins_during_lookup(context, monkeypatch)
    response = await open_request(port, world.events_path("RUN-2"))
    assert (response.status, response.headers["retry-after"]) == (503, "1")
    assert await response.read_json() == {"error": "server is shutting down", "retryAfter": 1}
    assert context.hub.runs == {"RUN-2": {holder}}


@pytest.mark.gen_test
async def test_a_client_that_has_the_done_gets_204_even_when_the_run_has_no_free_listener_slot(port, world, rows,
                                                                                                 context):
    rows.run(world.project, id="RUN-2", status="completed")
    done = context.hub.emit("RUN-2", "done", {"status": "completed"})
    assert done is not None
    context.hub.max_listeners_per_run = 1
    holder = context.hub.reserve("RUN-2")
    response = await open_request(port, world.events_path("RUN-2"), headers={"Last-Event-ID": done})
    assert response.status_line == b"HTTP/1.1 204 No Content"
    assert context.hub.runs == {"RUN-2": {holder}}


@pytest.mark.gen_test
async def test_an_unexpected_error_before_the_socket_is_taken_is_tornados_500_and_its_log_line(
        port, world, context, monkeypatch, expect_log):
    expect_log("tornado.application", r"^Uncaught exception GET /api/v1/runs/RUN-1/events\?token=\[redacted\] ")
    expect_log("sentri.access", r"GET /api/v1/runs/RUN-1/events 500$")

    async def plan_fails(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")
    monkeypatch.setattr("handlers.events_connect.plan_start", plan_fails)
    response = await open_request(port, world.events_path())
    assert response.status == 500
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert await response.read_json() == {"error": "internal server error"}


@pytest.mark.gen_test
async def test_an_unexpected_error_after_the_socket_is_taken_is_logged_and_writes_no_500_on_it(
        port, world, context, monkeypatch, expect_log):
    logged = expect_log("tornado.application",
                        r"^Uncaught exception GET /api/v1/runs/RUN-1/events\?token=\[redacted\] ")

    def open_fails(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")
    monkeypatch.setattr(context.hub, "open", open_fails)
    client = socket.create_connection(("127.0.0.1", port))
    client.setblocking(False)
    client.sendall(f"GET {world.events_path()} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    async def until_logged():  # type: ignore[no-untyped-def]
        while not logged.matched:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(until_logged(), 5)
    await asyncio.sleep(0.05)
    with pytest.raises(BlockingIOError):  # nothing was written: the socket is the stream's, not Tornado's
        client.recv(100)
    client.close()
