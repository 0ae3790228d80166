"""A log line stored while a stream's snapshot is read reaches that client once, not twice.

The snapshot's position in history is read before the database (so nothing falls in a gap);
a log stored in between is then both in the snapshot and among the live events. The stream
drops the live copy of a line its snapshot already holds.
"""

from __future__ import annotations

import pytest

from sentri.hub import WHEEL_SLOTS
from sentri.writes import append_log

from .frames import next_data
from .lookups import open_racing_a_producer
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
