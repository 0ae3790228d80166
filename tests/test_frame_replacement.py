"""A ``frame`` event (a screencast image) never cuts a slow viewer: a newer frame takes the
place of an older one still waiting whole in the listener's unsent bytes; every other event
is kept, in order, and ids only grow (resume stays right), with and without chunked framing."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from typing import List, Tuple

import pytest

from sentri import sse
from sentri.hub import Hub
from sentri.stream import CloseReason, Frame

from .socketpairs import fill_kernel_buffers, live_stream, read_exactly


def event(event_id: int, payload: dict) -> Frame:
    return Frame(sse.data_frame(sse.to_utf8(sse.dumps_js(payload)), f"1-{event_id}"), event_id=f"1-{event_id}")


def frame_event(event_id: int, image: str) -> Frame:
    return event(event_id, {"type": "frame", "image": image})


def log_event(event_id: int, message: str) -> Frame:
    return event(event_id, {"type": "log", "message": message})


def dechunk(raw: bytes) -> bytes:
    body, position = b"", 0
    while True:
        line_end = raw.index(b"\r\n", position)
        size = int(raw[position:line_end], 16)
        if size == 0:
            return body
        body += raw[line_end + 2:line_end + 2 + size]
        position = line_end + 2 + size + 2


def events_of(body: bytes) -> List[Tuple[str, dict]]:
    found = []
    for block in body.split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line and not line.startswith(b":"))
        if b"data" in lines:
            found.append((lines.get(b"id", b"").decode(), json.loads(lines[b"data"])))
    return found


def test_only_a_frame_event_is_replaceable():
    assert frame_event(1, "x").replaceable
    assert Frame(sse.event_frame({"type": "frame"})).replaceable
    assert not log_event(1, "frame").replaceable
    assert not Frame(sse.event_frame({"type": "frames", "image": "x"})).replaceable
    assert not Frame(sse.HEARTBEAT).replaceable


@pytest.mark.gen_test
@pytest.mark.parametrize("chunked", [False, True])
async def test_a_newer_frame_takes_the_place_of_an_unsent_one_and_logs_stay_in_order(chunked):
    hub = Hub(heartbeat_interval_s=1.0, max_listeners_per_run=10, max_writable_bytes=64 * 1024)
    stream, client_end = live_stream(hub, chunked=chunked)
    try:
        filler = fill_kernel_buffers(stream)
        sent = [log_event(1, "one"), frame_event(2, "A" * 20_000), log_event(3, "two"), frame_event(4, "B" * 20_000),
                log_event(5, "three"), frame_event(6, "C" * 20_000), log_event(7, "four")]
        for frame in sent:
            hub.deliver("RUN-1", frame)
        # Three 20 KB frames would be 60 KB waiting; only the newest waits: far below the bound.
        assert stream.frames_replaced == 2 and not stream.closed
        assert stream.unsent_bytes < 25_000
        assert stream.last_event_id == "1-7"
        expected = b"".join(frame.wire(chunked) for frame in sent if frame.event_id in ("1-1", "1-3", "1-5", "1-6",
                                                                                        "1-7"))
        received = await read_exactly(client_end, filler + len(expected))
        assert received[filler:] == expected
    finally:
        stream.close("test_teardown")
        client_end.close()


@pytest.mark.gen_test
async def test_a_frame_already_partly_sent_is_finished_not_replaced():
    hub = Hub(heartbeat_interval_s=1.0, max_listeners_per_run=10, max_writable_bytes=256 * 1024)
    stream, client_end = live_stream(hub)
    try:
        first, second = frame_event(1, "A" * 50_000), frame_event(2, "B" * 50_000)
        hub.deliver("RUN-1", first)  # the kernel takes some of it; the rest waits, already started
        assert stream.unsent is not None
        hub.deliver("RUN-1", second)
        assert stream.frames_replaced == 0
        third = frame_event(3, "C" * 50_000)
        hub.deliver("RUN-1", third)  # replaces the second, which had not started
        assert stream.frames_replaced == 1
        received = await read_exactly(client_end, len(first.raw) + len(third.raw))
        assert received == first.raw + third.raw
    finally:
        stream.close("test_teardown")
        client_end.close()


@pytest.mark.gen_test
async def test_a_done_after_frames_still_ends_the_stream_after_the_newest_frame():
    hub = Hub(heartbeat_interval_s=1.0, max_listeners_per_run=10, max_writable_bytes=64 * 1024)
    stream, client_end = live_stream(hub)
    try:
        filler = fill_kernel_buffers(stream)
        first = log_event(1, "first")  # whatever room is left goes to it, so the frames wait whole
        older, newer = frame_event(2, "A" * 10_000), frame_event(3, "B" * 10_000)
        done = Frame(sse.data_frame(b'{"type":"done","status":"completed"}', "1-4"), ends_stream=True, event_id="1-4")
        for frame in (first, older, newer, done):
            hub.deliver("RUN-1", frame)
        assert stream.frames_replaced == 1 and stream.ending
        received = await read_exactly(client_end, filler + len(first.raw) + len(newer.raw) + len(done.raw))
        assert received[filler:] == first.raw + newer.raw + done.raw
        await asyncio.sleep(0.05)
        assert stream.closed and stream.close_reason == CloseReason.DONE
    finally:
        stream.close("test_teardown")
        client_end.close()


class SlowReader(threading.Thread):
    """A real TCP client reading its stream at ``rate`` bytes/s until it sees ``until``."""

    def __init__(self, port: int, path: str, rate: int, until: bytes) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        self.rate, self.until = rate, until
        self.raw = b""
        self.finished_at = 0.0
        self.ended_early = False

    def run(self) -> None:
        self.sock.settimeout(30)
        step_s = 0.05
        while self.until not in self.raw:
            started = time.monotonic()
            budget = int(self.rate * step_s)
            while budget > 0:
                piece = self.sock.recv(min(budget, 16384))
                if not piece:
                    self.ended_early = True
                    return
                self.raw += piece
                budget -= len(piece)
                if self.until in self.raw[-len(piece) - len(self.until):]:
                    break
            time.sleep(max(0.0, step_s - (time.monotonic() - started)))
        self.finished_at = time.monotonic()


@pytest.mark.gen_test(timeout=60)
async def test_a_viewer_reading_200_kb_a_second_keeps_a_5_fps_screencast_of_150_kb_frames_and_every_log(
        port, world, context):
    reader = SlowReader(port, world.events_path(), rate=200_000, until=b'"message":"the end"')
    try:
        await watch_a_slow_viewer(reader, context.hub)
    finally:
        reader.sock.close()


async def watch_a_slow_viewer(reader: SlowReader, hub: Hub) -> None:
    deadline = time.monotonic() + 5
    while not any(stream.opened for stream in hub.runs.get("RUN-1", ())):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    [stream] = hub.runs["RUN-1"]
    # A small kernel send buffer, so the backlog is this process's to handle, not the kernel's.
    stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    reader.start()
    image = base64.b64encode(bytes(112_500)).decode()  # 150,000 characters
    frames, logs = 20, 0
    for n in range(frames):  # 5 a second for 4 seconds, two log lines between frames
        hub.emit("RUN-1", "frame", {"n": n, "image": image})
        for _ in range(2):
            hub.emit("RUN-1", "log", {"message": f"line {logs}"})
            logs += 1
            await asyncio.sleep(0.1)
    last_published = time.monotonic()
    hub.emit("RUN-1", "log", {"message": "the end"})
    while reader.is_alive():
        await asyncio.sleep(0.05)
    assert not reader.ended_early and not stream.closed
    assert stream.frames_replaced > 0
    received = events_of(dechunk(reader.raw.split(b"\r\n\r\n", 1)[1] + b"0\r\n\r\n"))
    messages = [payload["message"] for _, payload in received if payload["type"] == "log"]
    assert messages == [f"line {n}" for n in range(logs)] + ["the end"]
    shown = [payload["n"] for _, payload in received if payload["type"] == "frame"]
    assert shown == sorted(shown) and shown[-1] == frames - 1 and len(shown) < frames
    ids = [sse_id for sse_id, payload in received if payload["type"] != "snapshot"]
    assert ids == sorted(ids, key=lambda text: tuple(int(part) for part in text.split("-")))
    # Caught up: the backlog left when publishing stopped was at most a frame or two.
    assert reader.finished_at - last_published < 3.0


@pytest.mark.gen_test
async def test_a_stalled_reader_getting_only_frames_keeps_one_entry_not_one_per_frame():
    hub = Hub(heartbeat_interval_s=1.0, max_listeners_per_run=10, max_writable_bytes=64 * 1024)
    stream, client_end = live_stream(hub)
    try:
        fill_kernel_buffers(stream)
        hub.deliver("RUN-1", log_event(1, "first"))  # whatever room is left goes to it
        for n in range(2, 1000):
            hub.deliver("RUN-1", frame_event(n, "F" * 1000))
        assert not stream.closed and stream.frames_replaced == 997
        assert stream.unsent is not None and len(stream.unsent) <= 2
    finally:
        stream.close("test_teardown")
        client_end.close()
