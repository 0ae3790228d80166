"""The accept queue: a storm waits in our queue, in order, without starving the loop.

A real listening socket on loopback with real client connections; the callback that Tornado
would get records what it is handed and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Callable, Iterator, List, Tuple

import pytest

from sentri.accept import HANDOVERS_PER_TURN, accept_connections


def listening_socket(backlog: int = 4096) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def kernel_queue_length(sock: socket.socket) -> int:
    """Connections waiting in a listening socket's kernel accept queue (Linux ``tcp_info.tcpi_unacked``)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 24)[0])  # after 8 one-byte fields and rto, ato, snd_mss, rcv_mss


def connect_clients(port: int, count: int) -> List[socket.socket]:
    """Clients connected in this order; each sends its index so the server side can tell them apart."""
    clients = []
    for index in range(count):
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"%d\n" % index)
        clients.append(client)
    return clients


class Recorder:
    """The accept callback: the connections handed over, and the loop turn each came in."""

    def __init__(self) -> None:
        self.handed: List[Tuple[int, int]] = []  # (client index, turn)
        self.turn = 0
        self.connections: List[socket.socket] = []

    def __call__(self, connection: socket.socket, address: object) -> None:
        connection.setblocking(True)
        index = int(connection.recv(16).split(b"\n")[0])
        self.handed.append((index, self.turn))
        self.connections.append(connection)

    async def count_turns(self, until: int) -> None:
        """Advance the turn counter once per loop turn until ``until`` connections were handed over."""
        while len(self.handed) < until:
            self.turn += 1
            await asyncio.sleep(0)

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


class Listening:
    """A listening socket, the clients connected to it, and the recorder it hands connections to."""

    def __init__(self) -> None:
        self.sock = listening_socket()
        self.port = self.sock.getsockname()[1]
        self.recorder = Recorder()
        self.clients: List[socket.socket] = []
        self.stop: Callable[[], None] = lambda: None

    def connect(self, count: int) -> None:
        self.clients += connect_clients(self.port, count)

    def start(self) -> None:
        self.stop = accept_connections(self.sock, self.recorder)

    async def first_batch(self) -> None:
        while not self.recorder.handed:
            await asyncio.sleep(0)

    def handed_indexes(self) -> List[int]:
        return [index for index, _ in self.recorder.handed]


@contextlib.contextmanager
def listening() -> Iterator[Listening]:
    setup = Listening()
    try:
        yield setup
    finally:
        setup.stop()
        setup.recorder.close()
        for client in setup.clients:
            client.close()
        setup.sock.close()


@pytest.mark.gen_test(timeout=20)
async def test_a_burst_is_handed_over_in_arrival_order_a_bounded_batch_per_loop_turn():
    with listening() as setup:
        setup.connect(HANDOVERS_PER_TURN * 3 + 5)
        setup.start()
        await asyncio.wait_for(setup.recorder.count_turns(len(setup.clients)), timeout=10)
        assert setup.handed_indexes() == list(range(len(setup.clients)))
        turns = [turn for _, turn in setup.recorder.handed]
        batches = [turns.count(turn) for turn in sorted(set(turns))]
        assert batches == [HANDOVERS_PER_TURN] * 3 + [5]  # other work ran between every batch


@pytest.mark.gen_test(timeout=20)
async def test_connections_accepted_before_the_stop_are_still_handed_over_and_none_after_it():
    with listening() as setup:
        setup.connect(HANDOVERS_PER_TURN + 10)
        setup.start()
        await setup.first_batch()  # everything else is accepted and queued by now
        setup.stop()
        setup.connect(3)
        await asyncio.wait_for(setup.recorder.count_turns(HANDOVERS_PER_TURN + 10), timeout=10)
        await asyncio.sleep(0.2)
        assert setup.handed_indexes() == list(range(HANDOVERS_PER_TURN + 10))


@pytest.mark.gen_test(timeout=20)
async def test_one_readiness_event_empties_the_kernel_queue_though_only_one_batch_is_served():
    with listening() as setup:
        setup.connect(HANDOVERS_PER_TURN * 4)
        assert kernel_queue_length(setup.sock) == len(setup.clients)
        setup.start()
        await setup.first_batch()
        # Tornado's own loop would still leave all but 128 in the kernel's queue, where SYNs
        # beyond it are dropped; here they wait, connected, in ours.
        assert len(setup.recorder.handed) == HANDOVERS_PER_TURN
        assert kernel_queue_length(setup.sock) == 0
        await asyncio.wait_for(setup.recorder.count_turns(len(setup.clients)), timeout=10)


@pytest.mark.gen_test(timeout=20)
async def test_a_connection_whose_set_up_raises_does_not_strand_the_ones_queued_after_it(expect_log):
    expect_log("tornado.application", r"Exception in callback", level=logging.ERROR)  # the loop logs what raised
    with listening() as setup:
        def failing_on_the_first(connection: socket.socket, address: object) -> None:
            setup.recorder(connection, address)
            if len(setup.recorder.handed) == 1:
                raise RuntimeError("set-up failed")

        setup.connect(HANDOVERS_PER_TURN + 3)
        setup.stop = accept_connections(setup.sock, failing_on_the_first)
        await asyncio.wait_for(setup.recorder.count_turns(HANDOVERS_PER_TURN + 3), timeout=10)
        assert setup.handed_indexes() == list(range(HANDOVERS_PER_TURN + 3))
