"""Sentri's own load scenarios, where the side-by-side harness has none.

    python bench/scenarios.py HARNESS_DIR [--only storm,slowdb,cycles] [--json FILE]

* ``storm``: N clients (19,000) connect at once after a (re)start, each authenticated and
  served a real snapshot, from SQLite and from PostgreSQL: time until every one is streaming.
* ``slowdb``: every query delayed 200 ms. Streams already open keep receiving events and
  heartbeats while new connects wait on the slow database: event latency and heartbeat
  count on the open streams, against the same run with no delay.
* ``storm-under-load``: 1,000 streams already open receive 200 events/s while N clients
  (18,000: with the 1,000 open ones, as many streams as the 19,000 of ``storm``, within a
  process's 20,000 open files) connect at once: the open streams' delivery latency during
  the storm.
* ``cycles``: 100,000 connect/disconnect cycles in rounds; RSS and gc-tracked objects
  after each round: flat after warm-up means no leak.

The load generator is the harness's C ``sseload`` (one epoll thread per process, several
processes, each binding its own 127.x source addresses) and ``ssepub``; each client's own
CPU is recorded next to the server's so a saturated client shows up. The server is
``bench/serve_bench.py`` (the real app) with its diagnostics line enabled.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = "sentri-bench-secret-0123456789abcdef"
BODY = '{"type":"log","ts":%TS%,"seq":%SEQ%,"message":"bench log line %SEQ% for run %RUN%"}'
PG_SERVER = os.environ.get("SENTRI_BENCH_PG", "postgres://postgres@127.0.0.1:5432/postgres")


def log(*parts: Any) -> None:
    print(f"[scenarios {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def proc_stat(pid: int) -> Dict[str, float]:
    """RSS (KB) and CPU seconds of one process, from /proc."""
    with open(f"/proc/{pid}/status") as handle:
        rss = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_kb": rss, "cpu_s": (int(fields[11]) + int(fields[12])) / ticks}


def token() -> str:
    env = dict(os.environ, JWT_SECRET=SECRET, DATABASE_URL="sqlite:///:memory:")
    return subprocess.check_output([sys.executable, os.path.join(HERE, "serve_bench.py"), "--token"],
                                   env=env, text=True).strip()


class Server:
    """One bench server process (the real app, bench emit route and diagnostics on)."""

    def __init__(self, database_url: str = "", extra_env: Optional[Dict[str, str]] = None) -> None:
        self.tmp = tempfile.mkdtemp(prefix="sentri-scenario-")
        self.port = free_port()
        self.env = dict(os.environ, JWT_SECRET=SECRET, PORT=str(self.port), SENTRI_HOST="127.0.0.1",
                        DATABASE_URL=database_url or f"sqlite:///{self.tmp}/bench.db", SENTRI_BENCH_EMIT="1",
                        SENTRI_BENCH_DIAG="1", SSE_MAX_LISTENERS_PER_RUN="20000", LOG_LEVEL="warn",
                        **(extra_env or {}))
        self.log_path = os.path.join(self.tmp, "server.log")
        script = os.path.join(HERE, "serve_bench.py")
        subprocess.check_call([sys.executable, script, "--prepare-only"], env=self.env, stdout=subprocess.DEVNULL)
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 (open for the server's whole life)
        self.proc = subprocess.Popen([sys.executable, script], env=self.env, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/bench/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"bench server did not start; see {self.log_path}")

    def stat(self) -> Dict[str, float]:
        return proc_stat(self.proc.pid)

    def diag_lines(self) -> List[str]:
        with open(self.log_path, errors="replace") as handle:
            return [line.strip() for line in handle if line.startswith("diag ")]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()


class Load:
    """``sseload`` processes sharing N connections; each binds its own 127.x source addresses."""

    group = 0

    def __init__(self, harness: str, server: Server, tok: str, n: int, runs: int, run_base: int = 0,
                 procs: int = 0, rate: float = 0, hold_s: float = 600) -> None:
        Load.group += 1
        procs = procs or max(1, -(-n // 9500))
        self.procs: List[subprocess.Popen[str]] = []
        self.progress: List[Dict[str, Any]] = [{} for _ in range(procs)]
        self.ready_at: List[Optional[float]] = [None] * procs
        self.started = time.monotonic()
        offset = 0
        for i in range(procs):
            count = n // procs + (1 if i < n % procs else 0)
            cmd = [os.path.join(harness, "sseload"), "-p", str(server.port), "-n", str(count), "-k", str(runs),
                   "-B", str(run_base), "-O", str(offset), "-s", "8", "-S", f"127.{100 + Load.group % 100}.{i}.1",
                   "-t", tok, "-d", str(hold_s), "-r", str(rate / procs if rate else 0), "-c", "60", "-i", "100"]
            offset += count
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    stdin=subprocess.DEVNULL)
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(i, proc), daemon=True).start()

    def _read(self, i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("{"):
                try:
                    state = json.loads(line)
                except ValueError:
                    continue
                self.progress[i] = state
                if state.get("ready") and self.ready_at[i] is None:
                    self.ready_at[i] = time.monotonic()

    def total(self, key: str) -> int:
        return sum(int(state.get(key, 0)) for state in self.progress)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(at is not None for at in self.ready_at):
                return True
            if all(proc.poll() is not None for proc in self.procs):
                return False
            time.sleep(0.05)
        return False

    def stop(self) -> Dict[str, Any]:
        """End every client (they close with RST) and merge their result lines."""
        results = []
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            out, _ = proc.communicate(timeout=30)
            results.append(json.loads(out.strip().splitlines()[-1]))
        merged: Dict[str, Any] = {key: sum(r[key] for r in results) for key in
                                  ("connected", "failed_connects", "non_200", "snapshots", "events", "ts_events",
                                   "heartbeats", "closed_by_server")}
        merged["ready_s"] = max(r["ready_s"] for r in results)
        merged["latency_p50_ms"] = max(r["latency_us"]["p50"] for r in results) / 1000
        merged["latency_p99_ms"] = max(r["latency_us"]["p99"] for r in results) / 1000
        merged["latency_max_ms"] = max(r["latency_us"]["max"] for r in results) / 1000
        merged["client_max_cpu_pct"] = round(max((r["cpu_user_s"] + r["cpu_sys_s"]) / max(r["wall_s"], 0.001) * 100
                                                 for r in results), 1)
        merged["client_procs"] = len(results)
        merged["timeouts"] = sum(r.get("timeouts", 0) for r in results)
        merged["first_error"] = next((r["first_error"] for r in results if r.get("first_error")), "")
        return merged


def publish(harness: str, server: Server, events: int, rate: float, runs: int, run_base: int = 0
            ) -> subprocess.Popen[str]:
    cmd = [os.path.join(harness, "ssepub"), "-p", str(server.port), "-P", "/emit/run-%d", "-b", BODY,
           "-n", str(events), "-r", str(rate), "-c", "1", "-k", str(runs), "-B", str(run_base), "-d", "120"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


# -- scenarios --------------------------------------------------------------------------------

def storm(harness: str, tok: str, n: int, database: str) -> Dict[str, Any]:
    database_url, drop = "", None
    if database == "postgres":
        database_url, drop = private_pg_database()
    server = Server(database_url, {"SENTRI_DB_WORKERS": "4"})
    try:
        rss0 = server.stat()["rss_kb"]
        load = Load(harness, server, tok, n, runs=100, procs=2, rate=0)
        ready = load.wait_ready(120)
        elapsed = time.monotonic() - load.started
        stat = server.stat()
        result = load.stop()
        result.update(database=database, n=n, all_streaming=ready and result["snapshots"] == n,
                      wall_until_all_streaming_s=round(elapsed, 2), rss_mb=round(stat["rss_kb"] / 1024, 1),
                      kb_per_stream=round((stat["rss_kb"] - rss0) / max(result["connected"], 1), 2),
                      diag=server.diag_lines()[-3:])
        return result
    finally:
        server.stop()
        if drop:
            drop()


def private_pg_database() -> Any:
    import psycopg2

    name = f"sentri_bench_{os.getpid()}"
    admin = psycopg2.connect(PG_SERVER)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    base = PG_SERVER.rsplit("/", 1)[0]

    def drop() -> None:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()

    return f"{base}/{name}", drop


def slowdb(harness: str, tok: str, delay_ms: int, held: int = 2000, storm_n: int = 900) -> Dict[str, Any]:
    """Open streams on runs 0-9 get 10 events/s while new connects to runs 10-99 wait on the database.

    Newcomers arrive at 60/s, a pace the server handles without saturating its core, so the
    comparison with and without the delay isolates the database's slowness from connect CPU.
    """
    server = Server("", {"BENCH_DB_DELAY_MS": str(delay_ms)})
    try:
        open_streams = Load(harness, server, tok, held, runs=10, procs=1, rate=2000)
        if not open_streams.wait_ready(120):
            raise RuntimeError("open streams did not connect")
        time.sleep(1)
        hb0, cpu0, t0 = open_streams.total("heartbeats"), server.stat()["cpu_s"], time.monotonic()
        publisher = publish(harness, server, events=150, rate=10, runs=10)
        newcomers = Load(harness, server, tok, storm_n, runs=90, run_base=10, procs=1, rate=60)
        out, _ = publisher.communicate(timeout=60)
        window = time.monotonic() - t0
        heartbeats = open_streams.total("heartbeats") - hb0
        cpu = server.stat()["cpu_s"] - cpu0
        newcomers_ready = newcomers.wait_ready(60)
        newcomer_result = newcomers.stop()
        result = open_streams.stop()
        expected_hb = held * window / 5
        return {"delay_ms": delay_ms, "open_streams": held, "events_delivered": result["ts_events"],
                "events_expected": held * 15, "latency_p50_ms": result["latency_p50_ms"],
                "latency_p99_ms": result["latency_p99_ms"], "latency_max_ms": result["latency_max_ms"],
                "heartbeats": heartbeats, "heartbeats_expected": round(expected_hb),
                "window_s": round(window, 1), "server_cpu_pct": round(cpu / window * 100, 1),
                "newcomers_connected": newcomer_result["connected"], "newcomers_all_streaming": newcomers_ready,
                "newcomers_ready_s": newcomer_result["ready_s"], "publisher": json.loads(out.strip().splitlines()[-1]),
                "diag": server.diag_lines()[-4:]}
    finally:
        server.stop()


def storm_under_load(harness: str, tok: str, storm_n: int, held: int = 1000, rate: float = 200) -> Dict[str, Any]:
    """Open streams on runs 0-9 get ``rate`` events/s in all; meanwhile ``storm_n`` clients connect at
    once to runs 10-99 (each authenticated and served a snapshot). Delivery latency of the open
    streams during the storm, and the time until every newcomer streams."""
    server = Server("", {"SENTRI_DB_WORKERS": "4"})
    try:
        open_streams = Load(harness, server, tok, held, runs=10, procs=1, rate=2000)
        if not open_streams.wait_ready(120):
            raise RuntimeError("open streams did not connect")
        time.sleep(1)
        seconds = 15
        publisher = publish(harness, server, events=int(rate * seconds), rate=rate, runs=10)
        time.sleep(2)  # a steady flow before the storm
        newcomers = Load(harness, server, tok, storm_n, runs=90, run_base=10, procs=2, rate=0)
        newcomers_ready = newcomers.wait_ready(60)
        newcomers_s = time.monotonic() - newcomers.started
        out, _ = publisher.communicate(timeout=60)
        newcomer_result = newcomers.stop()
        result = open_streams.stop()
        return {"open_streams": held, "events_per_s": rate, "storm_n": storm_n,
                "events_delivered": result["ts_events"], "events_expected": held * int(rate * seconds) // 10,
                "latency_p50_ms": result["latency_p50_ms"], "latency_p99_ms": result["latency_p99_ms"],
                "latency_max_ms": result["latency_max_ms"], "newcomers_connected": newcomer_result["connected"],
                "newcomers_snapshots": newcomer_result["snapshots"], "newcomers_all_streaming": newcomers_ready,
                "newcomers_wall_until_all_streaming_s": round(newcomers_s, 2),
                "newcomers_failed": newcomer_result["failed_connects"],
                "newcomers_first_error": newcomer_result["first_error"],
                "publisher": json.loads(out.strip().splitlines()[-1]), "diag": server.diag_lines()[-4:]}
    finally:
        server.stop()


def cycles(harness: str, tok: str, total: int, per_round: int) -> Dict[str, Any]:
    server = Server()
    rounds: List[Dict[str, Any]] = []
    try:
        for index in range(max(1, total // per_round)):
            load = Load(harness, server, tok, per_round, runs=100, procs=1, rate=4000)
            ready = load.wait_ready(120)
            result = load.stop()
            time.sleep(1.0)  # the server sees the RSTs and closes every stream
            stat = server.stat()
            diag = server.diag_lines()
            rounds.append({"round": index + 1, "cycles": (index + 1) * per_round, "connected": result["connected"],
                           "all_ready": ready, "rss_mb": round(stat["rss_kb"] / 1024, 2),
                           "last_diag": diag[-1] if diag else ""})
            log(f"cycles round {index + 1}: {rounds[-1]}")
        # Objects counted by the diag line with no stream open: one more line after the last round.
        time.sleep(5.5)
        final = server.diag_lines()[-1]
        return {"per_round": per_round, "rounds": rounds, "final_diag": final}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("harness", help="a built copy of ../shared/bench (for sseload and ssepub)")
    parser.add_argument("--only", default="storm,slowdb,cycles", help="any of storm,slowdb,cycles,storm-under-load")
    parser.add_argument("--storm-n", type=int, default=19000)
    parser.add_argument("--storm-databases", default="sqlite,postgres")
    parser.add_argument("--storm-under-load-n", type=int, default=18000,
                        help="newcomers beside the 1,000 open streams (the sum must fit the open-files limit)")
    parser.add_argument("--cycles", type=int, default=100000)
    parser.add_argument("--cycles-per-round", type=int, default=5000)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parser.add_argument("--json", default=os.path.join(HERE, "results", f"scenarios-{stamp}.json"))
    args = parser.parse_args()
    tok = token()
    only = set(args.only.split(","))
    results: Dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv[1:],
                               "nproc": os.cpu_count()}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)

    def save() -> None:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)

    if "storm" in only:
        for database in args.storm_databases.split(","):
            log(f"storm {args.storm_n} on {database}")
            results[f"storm_{database}"] = storm(args.harness, tok, args.storm_n, database)
            log(results[f"storm_{database}"])
            save()
    if "slowdb" in only:
        for delay in (0, 200):
            log(f"slowdb delay {delay} ms")
            results[f"slowdb_{delay}ms"] = slowdb(args.harness, tok, delay)
            log(results[f"slowdb_{delay}ms"])
            save()
    if "storm-under-load" in only:
        log(f"storm of {args.storm_under_load_n} under a running load")
        results["storm_under_load"] = storm_under_load(args.harness, tok, args.storm_under_load_n)
        log(results["storm_under_load"])
        save()
    if "cycles" in only:
        log(f"cycles {args.cycles}")
        results["cycles"] = cycles(args.harness, tok, args.cycles, args.cycles_per_round)
        save()
    print(json.dumps(results, indent=1))
    log(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
