"""What one connect costs the server, in CPU seconds and garbage, independent of machine load.

    python bench/connect_cost.py [--tree DIR] [--connects 5000] [--concurrency 100] [--json FILE]

Starts ``DIR/bench/serve_bench.py`` (default: this checkout; pass another checkout to measure
older code the same way) on SQLite with 100 running runs, opens ``--connects`` streams with a
real token and snapshot (each kept open, as in a reconnect storm), and reads from the server
process itself, before and after the connects:

* CPU seconds (``time.process_time``: every thread, the database threads included), so
  another job on the machine changes the wall time but hardly the figure;
* objects the cyclic garbage collector found unreachable (``gc.callbacks``' ``collected``),
  with one full ``gc.collect()`` at each reading so garbage not yet collected is counted too;
* collections run and the time they paused the process;
* RSS growth per open stream.

The counters are read through ``SIGUSR1`` by a hook installed before ``serve_bench`` runs,
so the server code under test needs nothing for it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = "sentri-bench-secret-0123456789abcdef"

# Runs in the server process before serve_bench: counts what the collector finds and answers SIGUSR1.
HOOK = """
import gc, json, os, runpy, signal, sys, time
totals = {"collected": 0, "collections": [0, 0, 0], "gc_pause_s": 0.0, "gc_max_pause_s": 0.0}
started = [0.0]
def on_gc(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
        return
    pause = time.perf_counter() - started[0]
    totals["gc_pause_s"] += pause
    totals["gc_max_pause_s"] = max(totals["gc_max_pause_s"], pause)
    totals["collected"] += info["collected"]
    totals["collections"][info["generation"]] += 1
gc.callbacks.append(on_gc)
def report(signum, frame):
    cpu_s = time.process_time()
    snapshot = dict(totals, collections=list(totals["collections"]), cpu_s=cpu_s)
    totals["gc_max_pause_s"] = 0.0  # the longest pause between two readings
    gc.collect()
    snapshot["collected_after_full"] = totals["collected"]
    with open(os.environ["COST_REPORT"] + ".tmp", "w") as handle:
        json.dump(snapshot, handle)
    os.replace(os.environ["COST_REPORT"] + ".tmp", os.environ["COST_REPORT"])
signal.signal(signal.SIGUSR1, report)
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """``serve_bench.py`` of ``tree``; or, with ``floor``, the harness's Tornado floor peer (``app.py``)."""

    def __init__(self, tree: str, floor: str = "") -> None:
        self.tmp = tempfile.mkdtemp(prefix="sentri-cost-")
        self.port = free_port()
        self.report_path = os.path.join(self.tmp, "report.json")
        script = os.path.join(tree, "bench", "serve_bench.py")
        self.env = dict(os.environ, JWT_SECRET=SECRET, PORT=str(self.port), SENTRI_HOST="127.0.0.1",
                        DATABASE_URL=f"sqlite:///{self.tmp}/bench.db", SSE_MAX_LISTENERS_PER_RUN="20000",
                        LOG_LEVEL="warn", COST_REPORT=self.report_path, PYTHONPATH=tree)
        self.token = subprocess.check_output([sys.executable, script, "--token"], env=self.env, text=True).strip()
        if floor:
            # As the harness runs it beside us: uvloop, since `sentri serve` runs on it when installed.
            self.env.update(BENCH_TOKEN=self.token, FLOOR_UVLOOP="1")
            script = floor
        else:
            subprocess.check_call([sys.executable, script, "--prepare-only"], env=self.env,
                                  stdout=subprocess.DEVNULL)
        self.log = open(os.path.join(self.tmp, "server.log"), "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen([sys.executable, "-c", HOOK, script], env=self.env, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        assert self.proc.stdout is not None
        line = "" if floor else self.proc.stdout.readline()
        if floor:
            self._wait_listening()
        elif "bench server on" not in line:
            raise RuntimeError(f"server did not start: {line!r}; see {self.log.name}")

    def _wait_listening(self) -> None:
        import socket

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the floor peer did not listen; see {self.log.name}")

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))

    def counters(self) -> Dict[str, Any]:
        before = os.path.getmtime(self.report_path) if os.path.exists(self.report_path) else 0.0
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.path.exists(self.report_path) and os.path.getmtime(self.report_path) != before:
                with open(self.report_path) as handle:
                    return dict(json.load(handle))
            time.sleep(0.05)
        raise RuntimeError("the server did not report its counters")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()


async def connect_all(port: int, token: str, count: int, concurrency: int) -> List[asyncio.StreamWriter]:
    """``count`` streams, each read until its first frame (the snapshot) and then kept open."""
    limit = asyncio.Semaphore(concurrency)
    writers: List[asyncio.StreamWriter] = []
    failures = 0

    async def one(n: int) -> None:
        nonlocal failures
        async with limit:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /api/v1/runs/run-{n % 100}/events?token={token} HTTP/1.1\r\n"
                         f"Host: 127.0.0.1\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                failures += 1
            else:
                await reader.readuntil(b"\n\n")  # the first frame (retry or snapshot) is out
            writers.append(writer)

    await asyncio.gather(*(one(n) for n in range(count)))
    if failures:
        raise RuntimeError(f"{failures} connects were refused")
    return writers


async def close_all(writers: List[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    await asyncio.sleep(1)


def measure(tree: str, connects: int, concurrency: int, warm_up: int, floor: str = "") -> Dict[str, Any]:
    server = Server(tree, floor)
    try:
        warm = asyncio.run(_round(server, warm_up, concurrency))
        del warm
        before = server.counters()
        rss_before_kb = server.rss_kb()
        started = time.monotonic()
        writers_holder: List[Any] = []

        async def storm() -> None:
            writers_holder.append(await connect_all(server.port, server.token, connects, concurrency))

        loop = asyncio.new_event_loop()
        loop.run_until_complete(storm())
        wall_s = time.monotonic() - started
        after = server.counters()
        rss_after_kb = server.rss_kb()  # after the full collection of the reading
        loop.run_until_complete(close_all(writers_holder[0]))
        loop.close()
    finally:
        server.stop()
    cpu_s = after["cpu_s"] - before["cpu_s"]
    return {
        "server": os.path.abspath(floor) if floor else os.path.abspath(tree),
        "commit": "" if floor else commit_of(tree),
        "connects": connects,
        "concurrency": concurrency,
        "server_cpu_s_per_1000_connects": round(cpu_s / connects * 1000, 4),
        "unreachable_objects_per_connect": round((after["collected_after_full"] - before["collected_after_full"])
                                                 / connects, 2),
        "collections_gen0_gen1_gen2": [a - b for a, b in zip(after["collections"], before["collections"])],
        "gc_pause_s": round(after["gc_pause_s"] - before["gc_pause_s"], 3),
        "gc_max_pause_ms": round(after["gc_max_pause_s"] * 1000, 1),
        "rss_kb_per_open_stream": round((rss_after_kb - rss_before_kb) / connects, 2),
        "gc_threshold": os.environ.get("SENTRI_GC_THRESHOLD", "the server's default"),
        "wall_s": round(wall_s, 2),
        "load_average": os.getloadavg(),
    }


def commit_of(tree: str) -> str:
    found = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return found.stdout.strip() or "(not a git checkout)"


async def _round(server: Server, count: int, concurrency: int) -> None:
    writers = await connect_all(server.port, server.token, count, concurrency)
    await close_all(writers)


def append_results(path: str, results: List[Dict[str, Any]]) -> None:
    """Add ``results`` to the JSON list in ``path`` (created if missing), so runs accumulate."""
    existing: List[Any] = []
    if os.path.exists(path):
        with open(path) as handle:
            existing = json.load(handle)
    with open(path, "w") as handle:
        json.dump(existing + results, handle, indent=2)
        handle.write("\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", default=os.path.dirname(HERE), help="checkout whose server is measured")
    parser.add_argument("--connects", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--warm-up", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=1, help="fresh server each time")
    parser.add_argument("--floor", default="",
                        help="measure this Tornado floor peer instead (../shared/bench/tornado-floor/app.py)")
    parser.add_argument("--json", help="append the results to this JSON file (a list)")
    args = parser.parse_args()
    results = [measure(args.tree, args.connects, args.concurrency, args.warm_up, args.floor)
               for _ in range(args.repeat)]
    for result in results:
        print(json.dumps(result))
    if args.json:
        append_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
