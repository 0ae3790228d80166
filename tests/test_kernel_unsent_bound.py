"""A stream's TCP socket queues at most SENTRI_STREAM_KERNEL_UNSENT_BYTES of unsent bytes in the
kernel (``TCP_NOTSENT_LOWAT``): the rest waits in the server, where the write bound counts it and
a newer frame can replace an older one; a client that reads still gets every byte, in order."""

from __future__ import annotations

import asyncio
import socket
from typing import Iterator, Tuple

import pytest

from sentri.hub import Hub
from sentri.stream import bound_kernel_unsent

from .services import wait_until
from .socketpairs import read_exactly
from .sseclient import open_request


def notsent_lowat(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)


@pytest.fixture
def tcp_pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    """A loopback TCP connection: the server end non-blocking, the client end with a 4 KiB receive buffer."""
    listener = socket.create_server(("127.0.0.1", 0))
    client_end = socket.socket()
    client_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client_end.connect(listener.getsockname())
    server_end, _ = listener.accept()
    listener.close()
    server_end.setblocking(False)
    yield server_end, client_end
    client_end.close()
    if server_end.fileno() >= 0:  # not closed by a stream that owned it
        server_end.close()


@pytest.mark.gen_test
async def test_a_client_that_does_not_read_leaves_the_bytes_in_the_server_and_gets_them_all_later(tcp_pair):
    server_end, client_end = tcp_pair
    hub = Hub(heartbeat_interval_s=1.0, max_listeners_per_run=10, max_writable_bytes=1 << 20)
    stream = hub.reserve("RUN-1")
    assert stream is not None
    stream.attach_socket(server_end, chunked=False, kernel_unsent_bytes=16384)
    assert notsent_lowat(server_end) == 16384
    hub.open(stream, b"")
    data = bytes(range(256)) * 2048  # 512 KiB, under the write bound
    stream.write(data)
    # The client reads nothing yet: the kernel took about its 4 KiB window, the low-water mark and
    # one segment; left to itself it would have taken all of it (a loopback send buffer starts
    # near tcp_wmem's 4 MiB), out of reach of the write bound and of frame replacement.
    assert stream.unsent_bytes > len(data) // 2
    assert not stream.closed
    assert await read_exactly(client_end, len(data)) == data
    await wait_until(lambda: stream.unsent is None, what="the unsent bytes flushed")
    stream.close("test_teardown")


def test_zero_leaves_the_kernel_default_and_a_unix_socket_is_not_touched(tcp_pair):
    server_end, _ = tcp_pair
    assert notsent_lowat(server_end) == 0  # 0: the system-wide net.ipv4.tcp_notsent_lowat applies
    one, other = socket.socketpair()
    try:
        assert bound_kernel_unsent(one, 16384) is False
    finally:
        one.close()
        other.close()


@pytest.fixture
def settings(settings):
    return settings.replace(stream_kernel_unsent_bytes=32768)


@pytest.mark.gen_test(timeout=30)
async def test_a_stream_opened_over_http_gets_the_setting_on_its_socket(port, context, world):
    response = await open_request(port, world.events_path())
    assert response.status == 200
    await response.next_event()  # the snapshot: the stream is live
    [stream] = context.hub.runs["RUN-1"]
    assert notsent_lowat(stream.sock) == 32768
    response.close()
    await asyncio.sleep(0)
