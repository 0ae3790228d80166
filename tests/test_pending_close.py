"""A stream closed while it is still pending (too many events held while the run is read)
answers a JSON error; its socket is never handed to the closed stream, so nothing leaks."""

from __future__ import annotations

import os

import pytest

from .services import wait_until
from .sseclient import open_request


@pytest.fixture
def settings(settings):
    return settings.replace(sse_max_writable_bytes=4096, retry_ms=0)


def open_descriptors():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.gen_test(timeout=30)
async def test_a_stream_closed_as_too_slow_before_it_opened_gets_503_and_leaks_no_descriptor(
        port, context, world, expect_log):
    expect_log("sentri.access", r"GET /api/v1/runs/RUN-1/events 503$")
    lookup = context.store.open_stream

    async def lookup_while_events_pile_up(*args, **kwargs):
        for number in range(4):  # more than SSE_MAX_WRITABLE_BYTES held: the pending stream is closed
            context.hub.emit("RUN-1", "llm_token", {"token": str(number) * 2000})
        return await lookup(*args, **kwargs)

    baseline = open_descriptors()
    context.store.open_stream = lookup_while_events_pile_up
    response = await open_request(port, world.events_path())
    assert response.status == 503
    assert response.headers["retry-after"] == "1"
    assert await response.read_json() == {"error": "stream closed before it opened", "retryAfter": 1}
    assert context.hub.runs == {}
    response.close()
    await wait_until(lambda: open_descriptors() <= baseline, what="every descriptor of the request closed")
