"""Why sharded pub/sub: the same relay load on one Redis and on a 3-master Redis Cluster.

For each Redis shape, the same load: ``--instances`` real ``sentri serve`` processes
(bench/serve_bench.py), each with one stream open on every one of ``--runs`` runs, so every
instance subscribes to every run's channel; one worker publisher (``RunEventPublisher``, the
publish script, as Sentri's runners publish) sends ``--rate`` ``log`` events a second,
spread evenly over the runs, for ``--seconds``. Shapes:

- ``single``: one ``redis-server``;
- ``cluster``: 3 masters + 3 replicas (tests/redis_cluster.py), instances pointed at
  different nodes, sharded pub/sub (SPUBLISH/SSUBSCRIBE);
- ``cluster-compat``: the same with SENTRI_REDIS_CLUSTER_NODE_COMPAT=1 (every event also
  published classic, for Node instances: classic messages are broadcast to every node).

Per Redis node it reports, as deltas over the publishing window:

- ``publishes``: PUBLISH + SPUBLISH the node ran (INFO commandstats counts those the script
  runs too);
- ``bus in``: pub/sub messages it received from other nodes over the cluster bus
  (CLUSTER INFO ``cluster_stats_messages_publish(shard)_received``);
- ``deliveries``: messages it wrote to subscribers. Redis has no counter for these, so they
  are computed from what Redis reports: each channel's events x the node's own subscribers
  of that channel (PUBSUB NUMSUB / SHARDNUMSUB asked of that node) for each kind of publish
  that reaches it;
- ``pub/sub msgs`` = publishes + bus in + deliveries, and the ratio to the single Redis;
- ``cpu %`` (used_cpu_sys + used_cpu_user, of one core) and ``net out`` (total_net_output_bytes).

Every stream's received event count is checked against what was published: a shape that
lost or duplicated events is reported as such.

    python bench/cluster_pubsub.py --json bench/results/cluster-pubsub.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # run as a script from anywhere: the project and its test helpers

import redis  # noqa: E402

from sentri.worker_publisher import RunEventPublisher  # noqa: E402
from tests.redis_cluster import running_cluster  # noqa: E402
from tests.services import RedisServer, free_port, stop_process, wait_for_port  # noqa: E402

JWT_SECRET = "cluster-bench-secret"  # noqa: S105 - a throwaway secret of a local benchmark
EVENT_MARK = b'"type":"log"'
SHAPES = ("single", "cluster", "cluster-compat")


# -- the Redis side ---------------------------------------------------------------------------

def node_counters(client: redis.Redis[bytes]) -> Dict[str, float]:
    commands = client.info("commandstats")
    cpu = client.info("cpu")
    stats = client.info("stats")
    counters = {
        "publish": float(commands.get("cmdstat_publish", {}).get("calls", 0)),
        "spublish": float(commands.get("cmdstat_spublish", {}).get("calls", 0)),
        "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        "net_out": float(stats["total_net_output_bytes"]),
        "bus_in": 0.0,
    }
    with contextlib.suppress(redis.ResponseError):  # not a cluster node
        cluster = client.execute_command("CLUSTER", "INFO")
        text = cluster.decode() if isinstance(cluster, bytes) else str(cluster)
        fields = dict(line.split(":", 1) for line in text.split("\r\n") if ":" in line)
        counters["bus_in"] = float(sum(int(fields.get(f"cluster_stats_messages_{kind}_received", 0))
                                       for kind in ("publish", "publishshard")))
    return counters


def subscribers(client: redis.Redis[bytes], channels: List[str]) -> Tuple[Dict[str, int], Dict[str, int]]:
    """This node's own (classic, sharded) subscribers of each channel."""
    classic = _pairs(client.execute_command("PUBSUB", "NUMSUB", *channels))
    sharded: Dict[str, int] = {}
    for channel in channels:  # SHARDNUMSUB answers only for channels in this node's slots
        with contextlib.suppress(redis.ResponseError):
            sharded.update(_pairs(client.execute_command("PUBSUB", "SHARDNUMSUB", channel)))
    return classic, sharded


def _pairs(flat: List[Any]) -> Dict[str, int]:
    names = [name.decode() if isinstance(name, bytes) else str(name) for name in flat[0::2]]
    return dict(zip(names, (int(count) for count in flat[1::2])))


@contextlib.contextmanager
def redis_shape(shape: str, folder: str) -> Iterator[Tuple[List[str], List[Tuple[str, redis.Redis[bytes]]]]]:
    """(the REDIS_URL of each instance in turn, (name, client) of every Redis node)."""
    if shape == "single":
        server = RedisServer(folder).start()
        try:
            yield [server.url], [("redis", redis.Redis(port=server.port))]
        finally:
            server.stop()
        return
    with running_cluster(folder) as cluster:
        masters = cluster.masters()
        nodes = [(f"{node.role()} :{node.port}", redis.Redis(port=node.port)) for node in cluster.nodes]
        yield [master.url for master in masters], nodes


# -- the instances and their streams ------------------------------------------------------------

def prepare_database(folder: str, runs: int) -> Tuple[str, str]:
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{folder}/bench.db", JWT_SECRET=JWT_SECRET,
               SENTRI_BENCH_RUNS=str(runs))
    script = os.path.join(HERE, "serve_bench.py")
    subprocess.run([sys.executable, script, "--prepare-only"], env=env, check=True, capture_output=True)
    token = subprocess.run([sys.executable, script, "--token"], env=env, check=True, capture_output=True,
                           text=True).stdout.strip()
    return env["DATABASE_URL"], token


def start_instance(folder: str, number: int, database_url: str, redis_url: str, compat: bool
                   ) -> Tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(os.environ, DATABASE_URL=database_url, JWT_SECRET=JWT_SECRET, REDIS_URL=redis_url, PORT=str(port),
               HOST="127.0.0.1", LOG_LEVEL="warn", SENTRI_REDIS_CLUSTER_NODE_COMPAT="1" if compat else "0")
    log = open(os.path.join(folder, f"instance-{number}.log"), "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([sys.executable, os.path.join(HERE, "serve_bench.py")], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    wait_for_port(port, timeout_s=30, process=process)
    return process, port


class Stream:
    """One SSE stream, counting the ``log`` events it receives (the bytes are not parsed further)."""

    def __init__(self, port: int, run_id: str, token: str) -> None:
        self.port, self.run_id, self.token = port, run_id, token
        self.events = 0
        self.opened = asyncio.Event()
        self._tail = b""

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"GET /api/v1/runs/{self.run_id}/events?token={self.token} HTTP/1.1\r\n"
                     f"Host: bench\r\nAccept: text/event-stream\r\n\r\n".encode())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                if not self.opened.is_set() and b'"type":"snapshot"' in self._tail + data:
                    self.opened.set()
                # A mark split between two reads is counted once: the tail kept is one byte short of it.
                joined = self._tail + data
                self.events += joined.count(EVENT_MARK)
                self._tail = joined[-(len(EVENT_MARK) - 1):]
        finally:
            writer.close()


def publish_steadily(redis_url: str, runs: List[str], rate: int, seconds: float, compat: bool) -> int:
    """``rate`` events a second for ``seconds``, runs in turn, in 20 ms batches; returns how many."""
    publisher = RunEventPublisher(redis_url, cluster_node_compat=compat)
    sent = 0
    started = time.monotonic()
    try:
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= seconds:
                return sent
            due = min(int(elapsed * rate) + 1, int(seconds * rate)) - sent
            if due > 0:
                batch = [(runs[(sent + n) % len(runs)], "log", {"message": "bench"}) for n in range(due)]
                publisher.publish_many(batch)
                sent += due
            time.sleep(0.02)
    finally:
        publisher.close()


async def measure(shape: str, args: argparse.Namespace) -> Dict[str, Any]:
    runs = [f"run-{n}" for n in range(args.runs)]
    channels = [f"sentri:run:{run}" for run in runs]
    with tempfile.TemporaryDirectory(prefix=f"cluster-bench-{shape}-") as folder:
        database_url, token = prepare_database(folder, args.runs)
        with redis_shape(shape, folder) as (urls, nodes):
            processes = []
            try:
                for number in range(args.instances):
                    processes.append(start_instance(folder, number, database_url, urls[number % len(urls)],
                                                    compat=shape == "cluster-compat"))
                streams = [Stream(port, run, token) for _, port in processes for run in runs]
                tasks = [asyncio.ensure_future(stream.run()) for stream in streams]
                await asyncio.wait_for(asyncio.gather(*(stream.opened.wait() for stream in streams)), 60)
                await asyncio.sleep(1.0)  # subscriptions confirmed before the snapshot; let the rest settle
                who = {name: subscribers(client, channels) for name, client in nodes}
                before = {name: node_counters(client) for name, client in nodes}
                loop = asyncio.get_running_loop()
                sent = await loop.run_in_executor(None, publish_steadily, urls[0], runs, args.rate, args.seconds,
                                                  shape == "cluster-compat")
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and sum(stream.events for stream in streams) < sent * args.instances:
                    await asyncio.sleep(0.2)
                await asyncio.sleep(0.5)  # anything more (a duplicate) would arrive now
                after = {name: node_counters(client) for name, client in nodes}
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                for process, _ in processes:
                    stop_process(process)
            expected_of = {run: sent // len(runs) + (1 if number < sent % len(runs) else 0)
                           for number, run in enumerate(runs)}
            missing = [expected_of[stream.run_id] - stream.events for stream in streams]
            if any(missing):  # say why before the folder goes
                for number in range(len(processes)):
                    path = os.path.join(folder, f"instance-{number}.log")
                    with open(path, encoding="utf-8", errors="replace") as log:
                        print(f"--- instance {number} ({shape}), last lines:\n" + "".join(log.readlines()[-15:]),
                              file=sys.stderr)
            deltas = {name: {key: after[name][key] - before[name][key] for key in before[name]} for name, _ in nodes}
            # A classic PUBLISH reaches every node, a sharded one only its slot's master (and
            # replicas); events are spread evenly over the runs.
            classic_per_channel = sum(delta["publish"] for delta in deltas.values()) / len(runs)
            sharded_per_channel = sum(delta["spublish"] for delta in deltas.values()) / len(runs)
            rows = []
            for name, _ in nodes:
                delta = deltas[name]
                classic, sharded = who[name]
                deliveries = (classic_per_channel * sum(classic.values())
                              + sharded_per_channel * sum(sharded.values()))
                delta["publishes"] = delta["publish"] + delta["spublish"]
                messages = delta["publishes"] + delta["bus_in"] + deliveries
                rows.append({"node": name, "publishes": delta["publishes"], "bus_in": delta["bus_in"],
                             "deliveries": deliveries, "messages": messages,
                             "cpu_pct": 100.0 * delta["cpu_s"] / args.seconds, "net_out": delta["net_out"]})
    return {"shape": shape, "sent": sent, "streams": len(streams), "lost": sum(max(0, gap) for gap in missing),
            "duplicated": sum(max(0, -gap) for gap in missing), "nodes": rows}


def table(results: List[Dict[str, Any]]) -> str:
    single = next((result for result in results if result["shape"] == "single"), None)
    base = single["nodes"][0]["messages"] if single else None
    lines = ["| shape | node | publishes | bus in | deliveries | pub/sub msgs | vs one Redis | cpu % | net out MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        for row in result["nodes"]:
            ratio = f"{row['messages'] / base:.2f}" if base else "-"
            lines.append(f"| {result['shape']} | {row['node']} | {row['publishes']:,.0f} | {row['bus_in']:,.0f} | "
                         f"{row['deliveries']:,.0f} | {row['messages']:,.0f} | {ratio} | {row['cpu_pct']:.1f} | "
                         f"{row['net_out'] / 1e6:.1f} |")
    lines.append("")
    for result in results:
        lines.append(f"{result['shape']}: {result['sent']:,} events published, {result['streams']} streams "
                     f"(one per run per instance): lost {result['lost']}, duplicated {result['duplicated']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--rate", type=int, default=2000, help="events per second, over all runs")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    results = [asyncio.run(measure(shape, args)) for shape in args.shapes.split(",")]
    print(table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.machine(),
                       "cpus": os.cpu_count(), "load_before": os.getloadavg(), "args": vars(args),
                       "results": results}, handle, indent=2)
    return 1 if any(result["lost"] or result["duplicated"] for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
