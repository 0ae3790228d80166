"""A log line stored while a stream's snapshot is read reaches that client once, not twice;
an event counted in the snapshot's id is not sent after it.

The snapshot's position in history is read before the database (so nothing falls in a gap);
a log stored in between is then both in the snapshot and among the live events. The stream
drops the live copy of a line its snapshot already holds.
"""

from __future__ import annotations

import socket

import pytest

from sentri import sse
from sentri.hub import WHEEL_SLOTS, Hub
from sentri.stream import Frame
from sentri.writes import append_log

from .frames import next_data
from .lookups import open_racing_a_producer
from .socketpairs import read_exactly
from .sseclient import open_request

STORED = "[2026-01-01T00:00:01.000Z] stored while the snapshot was read"


@pytest.mark.gen_test
async def test_a_log_stored_during_the_snapshot_read_is_not_sent_again_live(port, world, context):
    response = await open_racing_a_producer(context, port, world.events_path(), lambda: append_log("RUN-1", STORED),
                                            lambda: context.hub.emit("RUN-1", "log", {"message": STORED}))

    snapshot = await response.next_event()
    assert snapshot["run"]["logs"] == [STORED]
    context.hub.emit("RUN-1", "log", {"message": "[2026-01-01T00:00:02.000Z] after"})
    assert await next_data(response) == b'data: {"type":"log","message":"[2026-01-01T00:00:02.000Z] after"}\n\n'


@pytest.mark.gen_test
async def test_the_same_text_logged_again_later_is_delivered(port, world, context, settings):
    """Only the copy that overlaps the snapshot is dropped: the guard ends after one heartbeat."""
    with context.store.database.connection_context():
        append_log("RUN-1", STORED)
    response = await open_request(port, world.events_path())
    assert (await response.next_event())["run"]["logs"] == [STORED]
    for _ in range(WHEEL_SLOTS):  # one full turn of the wheel: every stream has had its heartbeat
        context.hub._turn(0.0)
    context.hub.emit("RUN-1", "log", {"message": STORED})
    assert await next_data(response) == b'data: {"type":"log","message":"%s"}\n\n' % STORED.encode()


def token_frame(event_id: str) -> Frame:
    return Frame(sse.data_frame(b'{"type":"llm_token","token":"%s"}' % event_id.encode(), event_id),
                 event_id=event_id)


@pytest.mark.gen_test
async def test_held_events_up_to_the_snapshots_id_are_not_sent_after_it():
    # Found by the soak (bench/soak.py): with Redis, a run's history can be ahead of pub/sub, so
    # events already counted in the snapshot's id could still be held for the new stream; they
    # were sent after the snapshot, and the client saw ids go back (1-7, then 1-5, 1-6, 1-7).
    hub = Hub(heartbeat_interval_s=5, max_listeners_per_run=10, max_writable_bytes=1 << 20)
    server_end, client_end = socket.socketpair()
    server_end.setblocking(False)
    stream = hub.reserve("RUN-1")
    assert stream is not None
    stream.attach_socket(server_end, chunked=False)
    hub.deliver_many("RUN-1", [token_frame("1-5"), token_frame("1-6"), token_frame("1-7")])
    hub.deliver("RUN-1", token_frame("1-8"))
    snapshot = sse.data_frame(b'{"type":"snapshot","run":{}}', "1-7")
    hub.open(stream, snapshot, snapshot_id="1-7")
    hub.deliver("RUN-1", token_frame("1-7"))  # relayed late: dropped too
    hub.deliver("RUN-1", token_frame("1-9"))
    expected = snapshot + token_frame("1-8").raw + token_frame("1-9").raw
    assert await read_exactly(client_end, len(expected)) == expected
    stream.close("done")
    client_end.settimeout(5)
    assert client_end.recv(100) == b""
    client_end.close()
