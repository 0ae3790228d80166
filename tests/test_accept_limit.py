"""At its open-files limit the server waits for a free descriptor: it neither spins nor refuses.

A real ``sentri serve`` runs with a small ``RLIMIT_NOFILE`` and is filled with streams until
the kernel answers ``accept()`` with ``EMFILE``. Tornado's own accept handler would let the
error escape to the loop, which calls it again at once (a busy loop, one traceback per call).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import List, Tuple

import pytest

from .cluster import Instance
from .conftest import JWT_SECRET
from .sseclient import StreamResponse, open_request

OPEN_FILES = 96
METRICS_TOKEN = "metrics-token-for-the-accept-test"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far, from /proc (clock ticks)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def messages(instance: Instance) -> List[str]:
    return [json.loads(line).get("msg", "") for line in instance.log_lines() if line.startswith("{")]


async def fill_with_streams(instance: Instance,
                            path: str) -> Tuple[List[StreamResponse], asyncio.Task[StreamResponse]]:
    """Open streams until one is not answered: the streams, and the connect left waiting."""
    streams: List[StreamResponse] = []
    for _ in range(OPEN_FILES):
        connect = asyncio.ensure_future(open_request(instance.port, path))
        done, _ = await asyncio.wait([connect], timeout=1.0)
        if not done:
            return streams, connect
        response = connect.result()
        assert response.status == 200
        assert (await response.next_event())["type"] == "snapshot"
        streams.append(response)
    raise AssertionError(f"{OPEN_FILES} streams opened under a limit of {OPEN_FILES} open files")


@pytest.mark.gen_test(timeout=60)
async def test_a_connect_past_the_open_files_limit_waits_quietly_and_is_served_when_a_stream_ends(
        world, database_url, tmp_path, session_log_dir):
    serve = Instance({"DATABASE_URL": database_url, "JWT_SECRET": JWT_SECRET, "LOG_JSON": "true",
                      "SENTRI_DATA_DIR": str(tmp_path),
                      # One database connection, opened by the first connect: the streams alone then
                      # use up the descriptors, so it is accept() that meets the limit.
                      "SENTRI_DB_WORKERS": "1", "SSE_MAX_LISTENERS_PER_RUN": str(OPEN_FILES),
                      "SENTRI_METRICS_TOKEN": METRICS_TOKEN}, session_log_dir, open_files=OPEN_FILES).start()
    try:
        streams, waiting = await fill_with_streams(serve, world.events_path())
        assert serve.process is not None
        cpu_before = cpu_seconds(serve.process.pid)
        await asyncio.sleep(2.0)
        # Paused, not spinning: a busy accept loop burns the whole two seconds.
        assert cpu_seconds(serve.process.pid) - cpu_before < 0.5
        assert not waiting.done()
        assert messages(serve).count(
            "accepting paused: Too many open files; new connections wait in the listen backlog") == 1
        assert not any("Traceback" in line or "Exception in callback" in line for line in serve.log_lines())

        streams.pop().close()
        started = time.monotonic()
        admitted = await asyncio.wait_for(waiting, timeout=5)
        assert admitted.status == 200
        assert (await admitted.next_event())["type"] == "snapshot"
        assert time.monotonic() - started < 2.0  # within a few pauses of 0.25 s
        assert any(message.startswith("accepting again after ") for message in messages(serve))

        streams.pop().close()
        await asyncio.sleep(0.5)
        metrics = await open_request(serve.port, "/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert metrics.status == 200
        scraped = (await metrics.read_to_end()).decode()
        pauses = [line for line in scraped.splitlines() if line.startswith("sentri_accept_pauses_total ")]
        assert len(pauses) == 1 and float(pauses[0].split()[1]) >= 1.0
    finally:
        serve.stop()
