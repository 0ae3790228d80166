"""Whether an instance's memory stays flat through reconnect storms, and what it costs to keep it so.

    python bench/storm_rss.py [--streams 1000] [--storms 8] [--malloc pymalloc|malloc] [--json FILE]

An nginx reload or a killed neighbour moves every stream of an instance at once: all its
connections close and as many new ones arrive. The soak (bench/soak.py) saw an instance's RSS
keep part of such a storm's peak for good, with the same number of streams open before and
after. This starts ``bench/serve_bench.py`` (SQLite, 100 running runs, heap trimmed every
second), holds ``--streams`` streams, and then ``--storms`` times closes them all and opens as
many again (100 connects in flight), reading RSS once the server has been quiet for a few
seconds after each storm. It prints RSS after each storm and the growth from the first, and
the server's CPU seconds per 1,000 connects.

``--malloc malloc`` runs the server with ``PYTHONMALLOC=malloc``: Python's small objects come
from glibc's heap instead of Python's own arenas (which go back to the system only when
wholly empty), so the periodic ``malloc_trim`` can give back what a storm left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from connect_cost import Server, append_results, close_all, commit_of, connect_all  # noqa: E402

QUIET_S = 4.0  # after a storm: past one trim (SENTRI_MEMORY_TRIM_INTERVAL_S=1) and the closes' cleanup


def measure(tree: str, streams: int, storms: int, malloc: str) -> Dict[str, Any]:
    saved = dict(os.environ)
    os.environ["SENTRI_MEMORY_TRIM_INTERVAL_S"] = "1"
    if malloc == "malloc":
        os.environ["PYTHONMALLOC"] = "malloc"
    try:
        server = Server(tree)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    loop = asyncio.new_event_loop()
    rss_kb: List[int] = []
    cpu_s: List[float] = []
    try:
        held = loop.run_until_complete(connect_all(server.port, server.token, streams, 100))
        loop.run_until_complete(asyncio.sleep(QUIET_S))
        rss_kb.append(server.rss_kb())
        for _ in range(storms):
            before = server.counters()["cpu_s"]
            loop.run_until_complete(close_all(held))
            held = loop.run_until_complete(connect_all(server.port, server.token, streams, 100))
            cpu_s.append(server.counters()["cpu_s"] - before)
            loop.run_until_complete(asyncio.sleep(QUIET_S))
            rss_kb.append(server.rss_kb())
        loop.run_until_complete(close_all(held))
    finally:
        loop.close()
        server.stop()
    return {
        "commit": commit_of(tree), "malloc": malloc, "streams": streams, "storms": storms,
        "rss_mb_after_each_storm": [round(size / 1024, 1) for size in rss_kb],
        "growth_pct_first_storm": round((rss_kb[1] / rss_kb[0] - 1) * 100, 1),
        "growth_pct_after_first_storm": round((rss_kb[-1] / rss_kb[1] - 1) * 100, 1),
        "growth_pct_total": round((rss_kb[-1] / rss_kb[0] - 1) * 100, 1),
        # Each storm's CPU includes the reads of the counters (one full gc.collect each).
        "server_cpu_s_per_1000_connects": round(statistics.median(cpu_s) / streams * 1000, 4),
        "load_average": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", default=os.path.dirname(HERE), help="checkout whose server is measured")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--storms", type=int, default=8)
    parser.add_argument("--malloc", choices=("pymalloc", "malloc"), default="pymalloc")
    parser.add_argument("--json", help="append the result to this JSON file (a list)")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result = dict(measure(args.tree, args.streams, args.storms, args.malloc), started=started)
    print(json.dumps(result, indent=1))
    if args.json:
        append_results(args.json, [result])
    return 0


if __name__ == "__main__":
    sys.exit(main())
