"""A stream's life on one instance: snapshot, live events, done, heartbeats, release."""

from __future__ import annotations

import pytest

from .sseclient import open_request


@pytest.mark.gen_test
async def test_running_run_streams_snapshot_then_live_events_then_done(port, world, context):
    response = await open_request(port, world.events_path())
    assert response.status == 200
    snapshot = await response.next_event()
    assert snapshot["type"] == "snapshot"
    assert snapshot["run"]["id"] == "RUN-1"
    log_id = context.hub.emit("RUN-1", "log", {"message": "[2026-01-01T00:00:00.000Z] hello"})
    frame = await response.next_frame()
    assert frame == b'id: %s\ndata: {"type":"log","message":"[2026-01-01T00:00:00.000Z] hello"}\n\n' % log_id.encode()
    done_id = context.hub.emit("RUN-1", "done", {"status": "completed", "passed": 1})
    assert await response.next_frame() == (
        b'id: %s\ndata: {"type":"done","status":"completed","passed":1}\n\n' % done_id.encode())
    assert await response.server_closed()
    assert context.hub.runs == {}
