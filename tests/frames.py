"""Reading a stream frame by frame while event ids and retry hints are another feature's business.

Tests of the issue-2 wire format assert the exact ``data:`` bytes; whether a frame also carries
an ``id:`` line (Last-Event-ID resume) or the stream opens with a ``retry:`` hint is asserted by
that feature's tests. Here an id line is only checked to be one well-formed line.
"""

from __future__ import annotations

from typing import Any

from sentri import sse

from .sseclient import open_request


def data_part(frame: bytes) -> bytes:
    """The frame without its ``id:`` line, if it has one."""
    if frame.startswith(b"id: "):
        id_line, _, rest = frame.partition(b"\n")
        assert sse.is_valid_event_id(id_line[len(b"id: "):].decode("utf-8")), frame
        return rest
    return frame


async def next_data(response: Any, timeout: float = 5.0, skip_heartbeats: bool = True) -> bytes:
    """The next event frame as ``data: <json>\\n\\n`` (id line removed, retry hints skipped)."""
    while True:
        frame = await response.next_frame(timeout)
        if frame.startswith(b"retry: "):
            continue
        if skip_heartbeats and frame.startswith(b":"):
            continue
        return data_part(frame)


async def open_live(port: int, world: Any, headers: Any = None, path: Any = None) -> Any:
    """A stream of ``world``'s run that answered 200 and has sent its snapshot (it is registered)."""
    response = await open_request(port, path or world.events_path(), headers=headers)
    assert response.status == 200
    assert (await response.next_event())["type"] == "snapshot"
    return response
