"""What one stored publish costs the server, in CPU seconds, independent of machine load.

    python bench/publish_cost.py [--tree DIR] [--publishes 10000] [--connections 16]
                                 [--listeners 1000] [--repeat 1] [--json FILE]

Starts ``DIR/bench/serve_bench.py`` (default: this checkout; pass another checkout to measure
older code the same way) on SQLite with 100 running runs and ``SENTRI_PUBLISH_TOKEN`` set,
opens ``--listeners`` streams spread over the runs (read and discarded, as the harness's
throughput scenario does), then sends ``--publishes`` single-event ``log`` POSTs to the real
publish API (``POST /api/v1/runs/run-<n>/events``, the harness's body) over ``--connections``
kept-alive connections, each waiting for its ``202`` before the next. It reads from the server
process itself, through the ``SIGUSR1`` hook of ``bench/connect_cost.py``, before and after the
publishes:

* CPU seconds (``time.process_time``: every thread, the database threads included), so
  another job on the machine changes the wall time but hardly the figure;
* garbage collections and the time they paused the process.

and from the database afterwards, how many of the published lines ``run_logs`` holds (each
must be). Every answer must be a ``202``; anything else stops the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from connect_cost import Server, append_results, commit_of  # noqa: E402

PUBLISH_TOKEN = "bench-publish-token-0123456789"  # noqa: S105 (a bench-only secret)
RUNS = 100
# The harness's body for peer-api.json (bench/peer-api.json "publish.body").
BODY = '{{"type":"log","ts":{ts},"seq":{seq},"message":"bench log line {seq} for run {run}"}}'


async def listen(port: int, token: str, run: int, ready: asyncio.Queue[bool]) -> None:
    """One stream: its head, then everything read and dropped until the connection ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/v1/runs/run-{run}/events?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    await ready.put(head.startswith(b"HTTP/1.1 200"))
    try:
        while await reader.read(65536):
            pass
    finally:
        writer.close()


async def publish(port: int, first: int, count: int, step: int, errors: List[bytes]) -> None:
    """Publishes number ``first``, ``first + step``, ...: one POST at a time on one kept-alive connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for seq in range(first, first + count * step, step):
            run = seq % RUNS
            body = BODY.format(ts=int(time.time() * 1000), seq=seq, run=run).encode()
            writer.write(f"POST /api/v1/runs/run-{run}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Authorization: Bearer {PUBLISH_TOKEN}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            answer = await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 202"):
                errors.append(head.split(b"\r\n", 1)[0] + b" " + answer)
                return
    finally:
        writer.close()


async def publish_all(port: int, start: int, count: int, connections: int) -> None:
    errors: List[bytes] = []
    per = count // connections
    await asyncio.gather(*(publish(port, start + n, per, connections, errors) for n in range(connections)))
    if errors:
        raise RuntimeError(f"a publish was refused: {errors[0]!r}")


def stored_lines(database: str) -> int:
    with sqlite3.connect(database) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM run_logs WHERE seq > 3").fetchone()[0])


def profiler(pid: int, output: str) -> subprocess.Popen[bytes]:
    """py-spy sampling the server (every thread, idle ones left out) until it is sent SIGINT."""
    return subprocess.Popen(["py-spy", "record", "-r", "250", "--format", "raw", "-o", output, "--pid", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(tree: str, publishes: int, connections: int, listeners: int, warm_up: int,
            profile: str = "") -> Dict[str, Any]:
    os.environ["SENTRI_PUBLISH_TOKEN"] = PUBLISH_TOKEN
    server = Server(tree)
    publishes -= publishes % connections
    loop = asyncio.new_event_loop()
    try:
        ready: asyncio.Queue[bool] = asyncio.Queue()
        streams = [loop.create_task(listen(server.port, server.token, n % RUNS, ready)) for n in range(listeners)]
        opened = [loop.run_until_complete(ready.get()) for _ in range(listeners)]
        if not all(opened):
            raise RuntimeError(f"{opened.count(False)} streams were refused")
        loop.run_until_complete(publish_all(server.port, 0, warm_up - warm_up % connections, connections))
        spy = profiler(server.proc.pid, profile) if profile else None
        before = server.counters()
        started = time.monotonic()
        loop.run_until_complete(publish_all(server.port, warm_up, publishes, connections))
        wall_s = time.monotonic() - started
        after = server.counters()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        for stream in streams:
            stream.cancel()
        loop.run_until_complete(asyncio.gather(*streams, return_exceptions=True))
    finally:
        loop.close()
        server.stop()
    stored = stored_lines(os.path.join(server.tmp, "bench.db"))
    sent = publishes + warm_up - warm_up % connections
    cpu_s = after["cpu_s"] - before["cpu_s"]
    return {
        "server": os.path.abspath(tree),
        "commit": commit_of(tree),
        "publishes": publishes,
        "connections": connections,
        "listeners": listeners,
        "server_cpu_s_per_1000_publishes": round(cpu_s / publishes * 1000, 4),
        "server_cpu_percent": round(cpu_s / wall_s * 100, 1),
        "publishes_per_s_wall": round(publishes / wall_s),
        "stored_lines": stored,
        "published_lines": sent,
        "collections_gen0_gen1_gen2": [a - b for a, b in zip(after["collections"], before["collections"])],
        "gc_pause_s": round(after["gc_pause_s"] - before["gc_pause_s"], 3),
        "wall_s": round(wall_s, 2),
        "load_average": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", default=os.path.dirname(HERE), help="checkout whose server is measured")
    parser.add_argument("--publishes", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--listeners", type=int, default=1000)
    parser.add_argument("--warm-up", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1, help="fresh server each time")
    parser.add_argument("--json", help="append the results to this JSON file (a list)")
    parser.add_argument("--profile", default="",
                        help="also sample the server with py-spy while it publishes (raw stacks to this file)")
    args = parser.parse_args()
    results = []
    for _ in range(args.repeat):
        result = measure(args.tree, args.publishes, args.connections, args.listeners, args.warm_up, args.profile)
        print(json.dumps(result), flush=True)
        if result["stored_lines"] != result["published_lines"]:
            print(f"stored {result['stored_lines']} of {result['published_lines']} lines", file=sys.stderr)
            return 1
        results.append(result)
    if args.json:
        append_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
