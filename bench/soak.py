"""The fault-injecting soak of the whole deployment (issue 16): one command, then a verdict.

Starts the real parts: ``--instances`` ``sentri serve`` processes behind the real nginx with
the site config of ``deploy/nginx`` (rendered by ``tests/cluster.py``, as the nginx tests do),
one private ``redis-server`` with ``appendonly yes`` (so a Redis restart keeps the runs'
history), SQLite (default) or PostgreSQL (``--database postgres``). Then, for ``--duration``
seconds: ``--streams`` clients (``soak_clients.py``), producers (``soak_producers.py``) at
``--rate`` events/s, and a fault every ``--fault-every`` seconds from the plan seeded by
``--seed`` (``soak_plan.py``). At the end every run gets its ``done``, every stream must end,
and ``soak_check.py`` reads the histories and prints the verdict (exit status 0: clean).

    python bench/soak.py --duration 600 --streams 2000 --rate 500 --fault-every 20 --seed 1
    python bench/soak.py --duration 60 --streams 120 --rate 40 --fault-every 4 --warmup 8 --seed 14 \
        --client-processes 1 --rss-target 0                     # CI's minute (tests/test_soak.py)

See bench/README.md ("The soak") for what is checked and how to replay a seed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Dict, List, Optional, TextIO

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # tests.cluster, tests.services: the same nginx and Redis the tests run

from soak_check import check  # noqa: E402
from soak_plan import FAULTS, Plan  # noqa: E402

from tests.cluster import Instance, Nginx  # noqa: E402
from tests.redis_cluster import RedisCluster  # noqa: E402
from tests.services import RedisServer  # noqa: E402

JWT_SECRET = "soak-jwt-secret-0b7e5d"
PUBLISH_TOKEN = "soak-publish-token-4c1a9f"
# Bounds the soak tightens so its faults reach them within seconds (bench/README.md says why).
INSTANCE_SETTINGS = {
    "SSE_MAX_LISTENERS_PER_RUN": "1000",   # the soak's load, not the cap, is under test
    "SSE_MAX_WRITABLE_BYTES": "262144",    # stalled clients pass it within their stall
    "SENTRI_DRAIN_WINDOW_S": "4",          # a SIGTERM restart takes seconds, not 10+
    "SENTRI_MAX_STREAM_AGE_S": "120",      # streams also end of old age now and then
    "SENTRI_DB_WORKERS": "2",
    "LOG_LEVEL": "warn",
    "LOG_JSON": "true",
    "SENTRI_METRICS_TOKEN": "soak-metrics-token-77d2",  # streams open, sampled beside RSS
}
FAULT_KINDS = [name for name, _ in FAULTS]
STREAMS_OPEN = re.compile(r"^sentri_streams_open (\S+)$", re.M)


class Deployment:
    """Redis, the database, the instances and nginx, and what faults do to them."""

    def __init__(self, work: str, instances: int, database: str, postgres_url: str, run_count: int,
                 redis_kind: str = "single") -> None:
        self.work = work
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.redis = RedisServer(os.path.join(work, "redis"), appendonly=True)
        os.makedirs(self.redis.folder, exist_ok=True)
        # --redis cluster: 3 masters and 3 replicas (tests/redis_cluster.py) instead of one Redis;
        # REDIS_URL then lists every node as a seed, and the Redis faults act on one master.
        self.cluster = RedisCluster(os.path.join(work, "redis-cluster")) if redis_kind == "cluster" else None
        if database == "postgres":
            self.database_url = postgres_url
        else:
            self.sqlite_path = os.path.join(work, "soak.db")
            self.database_url = f"sqlite:///{self.sqlite_path}"
        self.database = database
        if self.cluster is not None:
            self.cluster.start()
            self.redis_url = self.cluster.seeds()
        else:
            self.redis.start()
            self.redis_url = self.redis.url
        self.base_env = {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
                         "JWT_SECRET": JWT_SECRET, "SENTRI_PUBLISH_TOKEN": PUBLISH_TOKEN,
                         "SENTRI_DATA_DIR": work, "SENTRI_BENCH_RUNS": str(run_count)}
        self.token = self.prepare()
        self.instances = [Instance({**self.base_env, **INSTANCE_SETTINGS}, self.logs).start(timeout_s=60)
                          for _ in range(instances)]
        self.incarnations = [0] * instances
        self.locks = collections.defaultdict(threading.Lock)
        # nginx's workers (not root) write request bodies over 16 KiB to temp-body/ in its folder:
        # a folder of its own that they can reach (the work folder may sit under a private one).
        self.nginx_folder = tempfile.mkdtemp(prefix="sentri-soak-nginx-")
        os.chmod(self.nginx_folder, 0o755)
        self.nginx = Nginx(self.nginx_folder, [instance.port for instance in self.instances], self.logs,
                           shutdown_timeout="2s").start()

    def prepare(self) -> str:
        """The runs (run-0 ..), their project, workspace and user, as the benchmarks prepare them."""
        env = {**os.environ, **self.base_env}
        script = os.path.join(HERE, "serve_bench.py")
        subprocess.run([sys.executable, script, "--prepare-only"], env=env, check=True, capture_output=True)
        return subprocess.run([sys.executable, script, "--token"], env=env, check=True, capture_output=True,
                              text=True).stdout.strip()

    def restart_instance(self, index: int, how: int, restart_after_s: float) -> None:
        instance = self.instances[index]
        assert instance.process is not None
        instance.process.send_signal(how)
        instance.process.wait(60)
        time.sleep(restart_after_s)
        self.incarnations[index] += 1
        instance.start(timeout_s=60)  # a loaded 2-core machine can take long to import and bind

    def pause_redis(self, seconds: float, pick: int) -> str:
        if self.cluster is not None:
            # A master stops answering for longer than the node timeout (1 s): its replica takes
            # over its slots, and the old master comes back as the new one's replica.
            master = self._master(pick)
            master.pause()
            time.sleep(seconds)
            master.resume()
            self.cluster.wait_settled()
            outcome = "its replica took over" if master.role() != "master" else "it stayed master"
            return f"redis master {master.address} SIGSTOP for {seconds} s ({outcome})"
        assert self.redis.process is not None
        self.redis.process.send_signal(signal.SIGSTOP)
        time.sleep(seconds)
        self.redis.process.send_signal(signal.SIGCONT)
        return f"redis SIGSTOP for {seconds} s"

    def restart_redis(self, restart_after_s: float, pick: int) -> str:
        if self.cluster is not None:
            # The cluster's nodes keep nothing on disk: a master's planned restart is a manual
            # failover to its replica (CLUSTER FAILOVER: the replica first takes every write).
            master = self._master(pick)
            replica = self.cluster.replica_of(master)
            replica.command("CLUSTER", "FAILOVER")
            self.cluster.wait_promoted(replica)
            return f"redis master {master.address} failed over to {replica.address} (CLUSTER FAILOVER)"
        assert self.redis.process is not None
        self.redis.process.terminate()  # SIGTERM: the append-only file is flushed before it exits
        self.redis.process.wait(30)
        time.sleep(restart_after_s)
        self.redis.start()
        return f"redis SIGTERM, started again after {restart_after_s} s"

    def _master(self, pick: int) -> Any:
        assert self.cluster is not None
        masters = sorted(self.cluster.masters(), key=lambda node: node.port)
        return masters[pick % len(masters)]

    def stall_database(self, seconds: float) -> None:
        if self.database == "postgres":
            import psycopg2

            connection = psycopg2.connect(self.database_url)
            try:
                with connection.cursor() as cursor:
                    cursor.execute("LOCK TABLE runs, run_logs IN ACCESS EXCLUSIVE MODE")
                    time.sleep(seconds)
                connection.rollback()
            finally:
                connection.close()
            return
        connection = sqlite3.connect(self.sqlite_path, timeout=30, isolation_level=None)
        try:
            connection.execute("BEGIN EXCLUSIVE")
            time.sleep(seconds)
            connection.execute("ROLLBACK")
        finally:
            connection.close()

    def rss_kb(self) -> List[Optional[int]]:
        sizes: List[Optional[int]] = []
        for instance in self.instances:
            size = None
            if instance.process is not None and instance.process.poll() is None:
                try:
                    with open(f"/proc/{instance.process.pid}/status", encoding="ascii") as status:
                        for line in status:
                            if line.startswith("VmRSS:"):
                                size = int(line.split()[1])
                except OSError:
                    pass
            sizes.append(size)
        return sizes

    def streams_open(self) -> List[Optional[int]]:
        """Each instance's open streams (its /metrics), None when it does not answer."""
        counts: List[Optional[int]] = []
        for instance in self.instances:
            request = urllib.request.Request(f"http://127.0.0.1:{instance.port}/metrics", headers={
                "Authorization": f"Bearer {INSTANCE_SETTINGS['SENTRI_METRICS_TOKEN']}"})
            try:
                with urllib.request.urlopen(request, timeout=1.0) as answer:
                    match = STREAMS_OPEN.search(answer.read().decode())
                counts.append(int(float(match.group(1))) if match else None)
            except (OSError, ValueError):
                counts.append(None)
        return counts

    def stop(self) -> None:
        self.nginx.stop()
        for instance in self.instances:
            instance.stop()
        if self.redis.process is not None:
            self.redis.process.send_signal(signal.SIGCONT)
        self.redis.stop()
        if self.cluster is not None:
            self.cluster.stop()
        shutil.rmtree(self.nginx_folder, ignore_errors=True)


def fault_target(kind: str, params: Dict[str, Any]) -> str:
    """What a fault acts on: two faults on one target run one after the other, never interleaved."""
    return f"instance {params['instance']}" if kind.startswith("instance_") else kind.split("_")[0]


def apply_fault(deployment: Deployment, kind: str, params: Dict[str, Any]) -> str:
    with deployment.locks[fault_target(kind, params)]:
        return _apply_fault(deployment, kind, params)


def _apply_fault(deployment: Deployment, kind: str, params: Dict[str, Any]) -> str:
    if kind == "instance_kill":
        deployment.restart_instance(params["instance"], signal.SIGKILL, params["restart_after_s"])
        return f"instance {params['instance']} SIGKILL, restarted after {params['restart_after_s']} s"
    if kind == "instance_term":
        deployment.restart_instance(params["instance"], signal.SIGTERM, params["restart_after_s"])
        return f"instance {params['instance']} SIGTERM (drained), restarted after {params['restart_after_s']} s"
    if kind == "redis_pause":
        return deployment.pause_redis(params["seconds"], params["pick"])
    if kind == "redis_restart":
        return deployment.restart_redis(params["restart_after_s"], params["pick"])
    if kind == "nginx_reload":
        deployment.nginx.reload()
        return "nginx -s reload"
    if kind == "db_stall":
        deployment.stall_database(params["seconds"])
        return f"database locked for {params['seconds']} s"
    return f"{int(params['stall_share'] * 100)} % of clients stop reading for {params['stall_s']} s"


async def inject_faults(plan: Plan, deployment: Deployment, t0: float, log: TextIO) -> None:
    loop = asyncio.get_running_loop()
    running: List[asyncio.Future[str]] = []
    for at, kind, params in plan.faults():
        await asyncio.sleep(max(0.0, t0 + at - time.time()))
        started = round(time.time() - t0, 3)

        def done(future: asyncio.Future[str], kind: str = kind, started: float = started) -> None:
            error = future.exception()
            what = f"FAILED: {error!r}" if error else future.result()
            log.write(json.dumps({"t": started, "t_end": round(time.time() - t0, 3), "kind": kind,
                                  "what": what}) + "\n")
            log.flush()

        future = loop.run_in_executor(None, apply_fault, deployment, kind, params)
        future.add_done_callback(done)
        running.append(future)
    await asyncio.gather(*running, return_exceptions=True)


async def sample_rss(deployment: Deployment, t0: float, log: TextIO, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        sizes = deployment.rss_kb()
        streams = await loop.run_in_executor(None, deployment.streams_open)
        log.write(json.dumps({"t": round(time.time() - t0, 3), "rss_kb": sizes, "streams": streams,
                              "incarnation": list(deployment.incarnations)}) + "\n")
        log.flush()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


async def soak(args: argparse.Namespace, plan: Plan, deployment: Deployment, work: str) -> int:
    t0 = time.time() + 3.0
    plan_json = plan.to_json()
    children: List[subprocess.Popen] = []  # type: ignore[type-arg]
    env = {**os.environ, "PYTHONPATH": ROOT}
    with open(os.path.join(work, "producers.stderr"), "wb") as stderr:
        producers = subprocess.Popen([sys.executable, os.path.join(HERE, "soak_producers.py"), plan_json, str(t0),
                                      str(deployment.nginx.port), PUBLISH_TOKEN, deployment.redis_url,
                                      deployment.database_url, os.path.join(work, "producers.jsonl")],
                                     env=env, stderr=stderr)
    per_process = -(-plan.streams // args.client_processes)
    for number in range(args.client_processes):
        first = number * per_process
        count = min(per_process, plan.streams - first)
        with open(os.path.join(work, f"clients-{number}.stderr"), "wb") as stderr:
            children.append(subprocess.Popen(
                [sys.executable, os.path.join(HERE, "soak_clients.py"), plan_json, str(t0),
                 str(deployment.nginx.port), deployment.token, str(first), str(count),
                 os.path.join(work, f"clients-{number}.jsonl")], env=env, stderr=stderr))
    stop_sampling = asyncio.Event()
    with open(os.path.join(work, "faults.jsonl"), "w", encoding="utf-8") as fault_log, \
            open(os.path.join(work, "rss.jsonl"), "w", encoding="utf-8") as rss_log:
        sampler = asyncio.ensure_future(sample_rss(deployment, t0, rss_log, stop_sampling))
        await inject_faults(plan, deployment, t0, fault_log)
        loop = asyncio.get_running_loop()
        limit_s = plan.duration_s + 150
        for child in [producers, *children]:
            remaining = max(1.0, t0 + limit_s - time.time())
            try:
                await loop.run_in_executor(None, child.wait, remaining)
            except subprocess.TimeoutExpired:
                child.kill()
                await loop.run_in_executor(None, child.wait)
        stop_sampling.set()
        await sampler
    return int(producers.returncode != 0) + sum(child.returncode != 0 for child in children)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load and faults (600)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the plan: runs, clients, faults (1)")
    parser.add_argument("--streams", type=int, default=2000, help="client streams open at once (2000)")
    parser.add_argument("--rate", type=float, default=500.0, help="events published per second (500)")
    parser.add_argument("--fault-every", type=float, default=20.0, help="seconds between faults (20; 0: none)")
    parser.add_argument("--instances", type=int, default=3, help="sentri serve instances behind nginx (3)")
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="seconds before the first fault; RSS growth is measured from then (60)")
    parser.add_argument("--client-processes", type=int, default=2, help="asyncio processes of clients (2)")
    parser.add_argument("--rss-target", type=float, default=5.0,
                        help="largest RSS growth of instance 0 after warm-up, in %% (5; 0: reported only)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--redis", choices=("single", "cluster"), default="single",
                        help="one Redis with an append-only file (single), or a Redis Cluster of 3 masters "
                             "and 3 replicas, the Redis faults acting on one master (cluster)")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/sentri_soak",
                        help="an empty database for --database postgres (its tables are dropped first)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "soak"),
                        help="folder for the verdict and the histories of any violation")
    parser.add_argument("--work", default="", help="folder for the whole history (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--faults", default="", metavar="KIND,...",
                        help="inject only these fault kinds (default: all of " + ", ".join(FAULT_KINDS) + ")")
    parser.add_argument("--log-level", default=INSTANCE_SETTINGS["LOG_LEVEL"], choices=("debug", "info", "warn"),
                        help="the instances' LOG_LEVEL (warn; info also logs every relay state change)")
    args = parser.parse_args(argv)
    fault_kinds = tuple(kind for kind in args.faults.split(",") if kind)
    unknown = sorted(set(fault_kinds) - set(FAULT_KINDS))
    if unknown:
        parser.error(f"unknown fault kind(s): {', '.join(unknown)}")
    INSTANCE_SETTINGS["LOG_LEVEL"] = args.log_level
    plan = Plan(seed=args.seed, duration_s=args.duration, streams=args.streams, events_per_s=args.rate,
                fault_every_s=args.fault_every, instances=args.instances, warmup_s=args.warmup,
                fault_kinds=fault_kinds)
    work = args.work or tempfile.mkdtemp(prefix="sentri-soak-")
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "plan.json"), "w", encoding="utf-8") as handle:
        handle.write(plan.to_json())
    if args.database == "postgres":
        reset_postgres(args.postgres_url)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(f"soak: seed {plan.seed}, {plan.duration_s:.0f} s, {plan.streams} streams, {plan.events_per_s:.0f} "
          f"events/s, {len(plan.runs())} runs, {len(plan.faults())} faults, {plan.instances} instances, "
          f"{args.database}, redis {args.redis}; history in {work}", flush=True)
    deployment = Deployment(work, plan.instances, args.database, args.postgres_url, len(plan.runs()), args.redis)
    try:
        failed_children = asyncio.run(soak(args, plan, deployment, work))
    finally:
        deployment.stop()
    verdict = check(work, deployment.database_url, args.out, started=started,
                    database=args.database, failed_children=failed_children, rss_target_pct=args.rss_target,
                    redis_kind=args.redis)
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if verdict else 1


def reset_postgres(url: str) -> None:
    """An empty database at ``url``: created when missing (through the server's ``postgres``
    database), its public schema dropped and made again otherwise."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = psycopg2.connect(urlunsplit(parts._replace(path="/postgres")))
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    connection = psycopg2.connect(url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    connection.close()


if __name__ == "__main__":
    sys.exit(main())
