"""Hub edges: one heartbeat timer however often it is started, an event nobody can see costs
nothing, and an event without a payload is just its type."""

from __future__ import annotations

import pytest

from sentri.hub import Hub, HubObserver
from sentri.stream import CloseReason

from .socketpairs import live_stream


class Emitted(HubObserver):
    def __init__(self) -> None:
        self.runs = []  # type: ignore[var-annotated]

    def event_emitted(self, run_id: str) -> None:
        self.runs.append(run_id)


def make_hub(observer: HubObserver) -> Hub:
    return Hub(heartbeat_interval_s=1.0, max_listeners_per_run=10, max_writable_bytes=1 << 20, observer=observer)


@pytest.mark.gen_test
async def test_starting_the_hub_twice_keeps_its_one_heartbeat_timer():
    hub = make_hub(HubObserver())
    hub.start()
    ticker = hub._ticker
    hub.start()
    assert hub._ticker is ticker and ticker is not None and ticker.is_running()
    hub.stop()
    assert hub._ticker is None and not ticker.is_running()


@pytest.mark.gen_test
async def test_an_event_with_no_listener_no_relay_and_no_history_is_dropped_before_it_is_encoded():
    observer = Emitted()
    hub = make_hub(observer)
    assert hub.emit("RUN-1", "log", {"message": "nobody"}) is None
    assert await hub.publish("RUN-1", "log", {"message": "nobody"}) is None
    assert observer.runs == [] and hub.runs == {}


@pytest.mark.gen_test
async def test_an_event_without_a_payload_is_sent_as_its_type_alone():
    observer = Emitted()
    hub = make_hub(observer)
    stream, client_end = live_stream(hub)
    try:
        assert hub.emit("RUN-1", "done") is None  # the base history assigns no ids
        assert client_end.recv(100) == b'data: {"type":"done"}\n\n'
        assert client_end.recv(100) == b""  # done ends the stream
        assert stream.close_reason == CloseReason.DONE and observer.runs == ["RUN-1"]
    finally:
        client_end.close()
