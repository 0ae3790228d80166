"""A connect that ends with a stream leaves no reference cycle behind (handlers/events_connect.py).

In a reconnect storm every object a connect leaves in a cycle waits for the cyclic garbage
collector, whose full collections walk every open stream while the loop stands still. So
whatever a connect allocated must be freed by reference counting alone: with the collector
switched off, real HTTP connects through the real server, then one collection, which must
find nothing of the server's (the test's own client may leave some; it is not counted).
"""

from __future__ import annotations

import gc
from typing import Any, Iterator, List

import pytest

from .sseclient import open_request

CONNECTS = 40
SERVER_MODULES = ("tornado.", "handlers.", "sentri.", "peewee", "playhouse.")


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def server_garbage() -> List[str]:
    """The type names of the server's objects one collection finds unreachable."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found = [f"{type(item).__module__}.{type(item).__qualname__}" for item in gc.garbage]
    gc.set_debug(0)
    gc.garbage.clear()
    return [name for name in found if name.startswith(SERVER_MODULES)]


async def open_streams(port: int, world: Any, runs: List[str], count: int) -> None:
    for n in range(count):
        response = await open_request(port, world.events_path(runs[n % len(runs)]))
        assert response.status == 200
        assert (await response.next_event())["type"] == "snapshot"


@pytest.mark.gen_test
async def test_connects_that_open_streams_leave_nothing_for_the_garbage_collector(
        port, world, rows, context, collector_off):
    runs = [world.run["id"], rows.run(world.project, id="RUN-2")["id"]]
    await open_streams(port, world, runs, 2)  # first reads: caches and shapes are built once
    server_garbage()
    await open_streams(port, world, runs, CONNECTS)
    assert context.hub.stream_count == CONNECTS + 2
    assert server_garbage() == []


@pytest.mark.gen_test
async def test_connects_of_a_finished_run_leave_nothing_for_the_garbage_collector(
        port, world, rows, context, collector_off):
    # hub.finish: the snapshot and the done, then the stream ends at once.
    finished = rows.run(world.project, id="RUN-3", status="completed")
    await open_streams(port, world, [finished["id"]], 2)
    server_garbage()
    await open_streams(port, world, [finished["id"]], CONNECTS)
    assert server_garbage() == []
