"""A stream on a real socket pair: what the kernel will not take now is kept and sent later,
spurious wake-ups change nothing, and a client that is gone or too slow ends the stream once."""

from __future__ import annotations

import asyncio
import selectors
import time
from typing import List

import pytest

from sentri import sse
from sentri.hub import Hub, HubObserver
from sentri.stream import CloseReason, EventStream, Frame

from .socketpairs import fill_kernel_buffers, live_stream, read_exactly

LIMIT = 64 * 1024


class ClosedStreams(HubObserver):
    def __init__(self) -> None:
        self.closed: List[str] = []

    def stream_closed(self, stream: EventStream) -> None:
        self.closed.append(stream.close_reason or "")


def make_hub(observer: HubObserver = None) -> Hub:  # type: ignore[assignment]
    return Hub(heartbeat_interval_s=1.0, max_listeners_per_run=10, max_writable_bytes=LIMIT, observer=observer)


def watched_events(stream: EventStream) -> int:
    """What the event loop watches the stream's socket for (EVENT_READ, EVENT_WRITE bits)."""
    assert stream.sock is not None
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    return int(selector.get_key(stream.sock.fileno()).events)


async def until(condition, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Let the loop run until ``condition()`` holds (socket callbacks have no other signal)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def test_a_frame_reads_its_log_message_once_and_remembers_it():
    log_frame = Frame(sse.event_frame({"type": "log", "message": "hello"}))
    assert log_frame.log_message() == "hello"
    log_frame.raw = sse.event_frame({"type": "log", "message": "changed"})
    assert log_frame.log_message() == "hello"  # not parsed again
    other = Frame(sse.event_frame({"type": "progress", "done": 1}))
    assert other.log_message() is None
    other.raw = sse.event_frame({"type": "log", "message": "late"})
    assert other.log_message() is None  # "no message" is remembered too


@pytest.mark.gen_test
async def test_a_write_the_kernel_refuses_entirely_is_kept_and_sent_once_the_client_reads():
    stream, client_end = live_stream(make_hub())
    try:
        filler = fill_kernel_buffers(stream)
        stream.write(b"data: kept\n\n")  # send() raises EAGAIN: nothing went out
        assert stream.unsent is not None and stream.unsent_bytes == len(b"data: kept\n\n")
        assert watched_events(stream) == selectors.EVENT_READ | selectors.EVENT_WRITE
        stream.write(b"data: after\n\n")  # queued behind, in order
        received = await read_exactly(client_end, filler + 25)
        assert received == b"f" * filler + b"data: kept\n\ndata: after\n\n"
        await until(lambda: stream.unsent is None)
        # Flushed and not ending: the stream stays live and the loop stops watching for writability.
        assert not stream.closed and stream.unsent_bytes == 0
        assert watched_events(stream) == selectors.EVENT_READ
    finally:
        stream.close("test_teardown")
        client_end.close()


@pytest.mark.gen_test
async def test_a_spurious_writable_wake_up_while_the_kernel_is_still_full_keeps_the_bytes():
    stream, client_end = live_stream(make_hub())
    try:
        fill_kernel_buffers(stream)
        stream.write(b"data: waiting\n\n")
        stream._on_writable()  # the socket is still full: send() raises EAGAIN again
        assert list(stream.unsent or ()) and bytes(stream.unsent[0]) == b"data: waiting\n\n"  # type: ignore[index]
        assert stream.unsent_bytes == len(b"data: waiting\n\n") and not stream.closed
    finally:
        stream.close("test_teardown")
        client_end.close()


@pytest.mark.gen_test
async def test_a_first_write_larger_than_the_limit_the_kernel_cannot_take_cuts_the_stream_at_once():
    observer = ClosedStreams()
    hub = make_hub(observer)
    stream, client_end = live_stream(hub)
    try:
        filler = fill_kernel_buffers(stream)
        stream.write(b"x" * (LIMIT + 1))
        assert stream.closed and stream.close_reason == CloseReason.TOO_SLOW
        assert stream.sock is None and stream.unsent is None
        assert observer.closed == [CloseReason.TOO_SLOW] and hub.runs == {}
        # The client gets what the kernel had taken, then the end of the connection.
        assert await read_exactly(client_end, filler + 1) == b"f" * filler
    finally:
        client_end.close()


@pytest.mark.gen_test
async def test_a_readable_wake_up_with_nothing_to_read_leaves_the_stream_open():
    stream, client_end = live_stream(make_hub())
    try:
        stream._on_readable()  # nothing sent: recv() raises EAGAIN
        assert not stream.closed and stream.sock is not None
    finally:
        stream.close("test_teardown")
        client_end.close()


@pytest.mark.gen_test
async def test_bytes_a_client_sends_after_its_request_are_ignored_and_only_its_hang_up_ends_the_stream():
    observer = ClosedStreams()
    stream, client_end = live_stream(make_hub(observer))
    client_end.sendall(b"stray bytes")
    stream._on_readable()  # reads the stray bytes: not a hang-up
    assert not stream.closed
    client_end.close()
    await until(lambda: stream.closed)
    assert stream.close_reason == CloseReason.CLIENT_GONE and observer.closed == [CloseReason.CLIENT_GONE]


@pytest.mark.gen_test
async def test_ending_a_stream_whose_client_is_gone_closes_it_as_client_gone_not_done():
    observer = ClosedStreams()
    hub = make_hub(observer)
    stream, client_end = live_stream(hub, chunked=True)
    client_end.close()
    stream.end(CloseReason.DONE)  # the last chunk cannot be sent: EPIPE
    assert stream.closed and stream.close_reason == CloseReason.CLIENT_GONE
    assert stream.deadline is None and stream.sock is None
    assert observer.closed == [CloseReason.CLIENT_GONE] and hub.runs == {}


@pytest.mark.gen_test
async def test_closing_a_stream_twice_reports_it_once_and_keeps_the_first_reason():
    observer = ClosedStreams()
    stream, client_end = live_stream(make_hub(observer))
    try:
        stream.close(CloseReason.REVOKED)
        stream.close(CloseReason.TOO_OLD)
        assert stream.close_reason == CloseReason.REVOKED
        assert observer.closed == [CloseReason.REVOKED]
        assert client_end.recv(16) == b""  # the socket was closed the first time
    finally:
        client_end.close()
