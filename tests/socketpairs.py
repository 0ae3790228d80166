"""Streams on a real socket pair, without HTTP: the stream owns the server end, the test reads the client end."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Tuple

from sentri.stream import EventStream


def live_stream(hub: Any, run_id: str = "RUN-1", chunked: bool = False) -> Tuple[EventStream, socket.socket]:
    """A stream gone live on the server end of a socket pair; returns it and the client end.

    Both ends get 4 KiB kernel buffers, so a test fills them with little data.
    """
    server_end, client_end = socket.socketpair()
    server_end.setblocking(False)
    server_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream = hub.reserve(run_id)
    assert stream is not None
    stream.attach_socket(server_end, chunked)
    hub.open(stream, b"")
    return stream, client_end


def fill_kernel_buffers(stream: EventStream) -> int:
    """Send on the stream's socket until the kernel takes no more; returns the bytes it took."""
    sock = stream.sock
    assert sock is not None
    total = 0
    while True:
        try:
            total += sock.send(b"f" * 4096)
        except BlockingIOError:
            return total


async def read_exactly(client_end: socket.socket, count: int) -> bytes:
    """Read ``count`` bytes on a thread, so the loop keeps flushing the stream meanwhile."""
    def read() -> bytes:
        client_end.settimeout(10)
        data = b""
        while len(data) < count:
            piece = client_end.recv(65536)
            if not piece:
                break
            data += piece
        return data
    return await asyncio.get_running_loop().run_in_executor(None, read)
