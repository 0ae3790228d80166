"""The accept queue: a storm waits in our queue, in order, without starving the loop.

A real listening socket on loopback with real client connections; the callback that Tornado
would get records what it is handed and when.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import List, Tuple

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


@pytest.mark.gen_test(timeout=20)
async def test_a_burst_is_handed_over_in_arrival_order_a_bounded_batch_per_loop_turn():
    sock = listening_socket()
    recorder = Recorder()
    clients = connect_clients(sock.getsockname()[1], HANDOVERS_PER_TURN * 3 + 5)
    stop = accept_connections(sock, recorder)
    try:
        await asyncio.wait_for(recorder.count_turns(len(clients)), timeout=10)
        assert [index for index, _ in recorder.handed] == list(range(len(clients)))
        turns = [turn for _, turn in recorder.handed]
        batches = [turns.count(turn) for turn in sorted(set(turns))]
        assert batches == [HANDOVERS_PER_TURN] * 3 + [5]  # other work ran between every batch
    finally:
        stop()
        recorder.close()
        for client in clients:
            client.close()
        sock.close()


@pytest.mark.gen_test(timeout=20)
async def test_connections_accepted_before_the_stop_are_still_handed_over_and_none_after_it():
    sock = listening_socket()
    recorder = Recorder()
    port = sock.getsockname()[1]
    clients = connect_clients(port, HANDOVERS_PER_TURN + 10)
    stop = accept_connections(sock, recorder)
    try:
        while not recorder.handed:  # the first batch: everything else is accepted and queued
            await asyncio.sleep(0)
        stop()
        late = connect_clients(port, 3)
        await asyncio.wait_for(recorder.count_turns(len(clients)), timeout=10)
        await asyncio.sleep(0.2)
        assert [index for index, _ in recorder.handed] == list(range(len(clients)))
    finally:
        recorder.close()
        for client in clients + late:
            client.close()
        sock.close()


@pytest.mark.gen_test(timeout=20)
async def test_one_readiness_event_empties_the_kernel_queue_though_only_one_batch_is_served():
    sock = listening_socket()
    recorder = Recorder()
    clients = connect_clients(sock.getsockname()[1], HANDOVERS_PER_TURN * 4)
    assert kernel_queue_length(sock) == len(clients)
    stop = accept_connections(sock, recorder)
    try:
        while not recorder.handed:
            await asyncio.sleep(0)
        # Tornado's own loop would still leave all but 128 in the kernel's queue, where SYNs
        # beyond it are dropped; here they wait, connected, in ours.
        assert len(recorder.handed) == HANDOVERS_PER_TURN
        assert kernel_queue_length(sock) == 0
        await asyncio.wait_for(recorder.count_turns(len(clients)), timeout=10)
    finally:
        stop()
        recorder.close()
        for client in clients:
            client.close()
        sock.close()
