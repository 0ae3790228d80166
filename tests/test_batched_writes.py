"""Events of a run published together reach each listener in one write (one ``send``), in
order, with the same bytes, dedupe and ``done`` handling as one by one."""

from __future__ import annotations

import socket
from typing import Any, List

import pytest

from sentri.hub import Hub
from sentri.stream import CloseReason

from .socketpairs import live_stream, read_exactly


class CountingSocket:
    """The stream's socket, counting its ``send`` calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends: List[int] = []

    def send(self, data: Any) -> int:
        self.sends.append(len(data))
        return self.sock.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def make_hub() -> Hub:
    return Hub(heartbeat_interval_s=1.0, max_listeners_per_run=10, max_writable_bytes=1 << 20)


@pytest.mark.gen_test
@pytest.mark.parametrize("chunked", [False, True])
async def test_a_batch_reaches_each_listener_in_one_send(chunked):
    hub = make_hub()
    listeners = [live_stream(hub, chunked=chunked) for _ in range(3)]
    counters = []
    for stream, _ in listeners:
        counter = CountingSocket(stream.sock)  # type: ignore[arg-type]
        stream.sock = counter  # type: ignore[assignment]
        counters.append(counter)
    try:
        ids = await hub.publish_many("RUN-1", [("log", {"message": f"line {n}"}) for n in range(50)])
        assert len(ids) == 50
        assert [len(counter.sends) for counter in counters] == [1, 1, 1]
        one_by_one = make_hub()
        single, single_end = live_stream(one_by_one, chunked=chunked)
        for n in range(50):
            one_by_one.emit("RUN-1", "log", {"message": f"line {n}"})
        expected = await read_exactly(single_end, counters[0].sends[0])
        for (_, client_end), counter in zip(listeners, counters):
            assert await read_exactly(client_end, counter.sends[0]) == expected
        single.close("test_teardown")
        single_end.close()
    finally:
        for stream, client_end in listeners:
            stream.sock = stream.sock.sock if isinstance(stream.sock, CountingSocket) else stream.sock
            stream.close("test_teardown")
            client_end.close()


@pytest.mark.gen_test
async def test_a_batch_with_a_done_ends_the_stream_after_it():
    hub = make_hub()
    stream, client_end = live_stream(hub)
    try:
        ids = await hub.publish_many("RUN-1", [("log", {"message": "last"}), ("done", {"status": "completed"}),
                                               ("log", {"message": "after the end"})])
        assert len(ids) == 3
        received = b""
        while b"done" not in received:
            received += await read_exactly(client_end, 1)
        received += await read_exactly(client_end, 2)
        assert b"after the end" not in received
        assert stream.closed and stream.close_reason == CloseReason.DONE
    finally:
        stream.close("test_teardown")
        client_end.close()
