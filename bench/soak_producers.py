"""Soak producers: a steady mix of events for every running run, through all three ways in.

Each second, every running run of the plan gets its share of ``events_per_s`` (log,
llm_token, result, frame), sent through one of: the HTTP publish API behind nginx (one event,
a JSON array or NDJSON), the Python worker publisher (``RunEventPublisher.publish_many``, in a
thread), or ``sentri emit --ndjson -`` (a subprocess, at most one every few seconds). When a
run's time is up and nothing is in flight for it, its ``done`` goes through the HTTP API.

Every event carries a unique tag (``soak:<run number>.<n>``) near the start of its JSON, which
the clients find in their frames. Every publish is recorded with each try's answer: the ids of
a 202, or the status or error it retried on. A 503 (documented: nothing was published) is
retried as is; an ambiguous failure (connection lost, 502/504 from nginx, a Redis error after
the database write) is retried too and its tags marked ``ambiguous``: they may arrive twice.

    python bench/soak_producers.py PLAN_JSON T0 PORT PUBLISH_TOKEN REDIS_URL DATABASE_URL RECORD_FILE
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from soak_plan import EVENT_MIX, Plan

from sentri.runtime import run as run_loop

CHANNELS = (("http", 0.72), ("python", 0.28))
EMIT_EVERY_S = 4.0
REQUEST_TIMEOUT_S = 30.0

Event = Tuple[str, Dict[str, Any]]


class Recorder:
    def __init__(self, path: str, t0: float) -> None:
        self.handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self.lock = threading.Lock()
        self.t0 = t0

    def now(self) -> float:
        return round(time.time() - self.t0, 3)

    def write(self, record: Dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self.lock:
            self.handle.write(line)

    def close(self) -> None:
        self.handle.close()


def make_event(rng: random.Random, event_type: str, tag: str) -> Event:
    if event_type == "log":
        return "log", {"message": f"soak:{tag} step", "level": rng.choice(("info", "info", "warn"))}
    if event_type == "llm_token":
        return "llm_token", {"token": f"soak:{tag} "}
    if event_type == "result":
        return "result", {"result": {"testId": f"soak:{tag}", "status": rng.choice(("passed", "failed")),
                                     "durationMs": rng.randrange(50, 5000)}}
    return "frame", {"data": f"soak:{tag}:" + "A" * rng.randrange(1000, 6000)}


async def http_request(port: int, path: str, headers: Dict[str, str], body: bytes) -> Tuple[int, Dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: soak\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(head.encode() + b"\r\n" + body)
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        answer_headers = {}
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            answer_headers[name.strip().lower()] = value.strip()
        length = int(answer_headers.get("content-length", "0"))
        return int(lines[0].split()[1]), answer_headers, await reader.readexactly(length)
    finally:
        writer.close()


class Producers:
    def __init__(self, plan: Plan, recorder: Recorder, port: int, publish_token: str, redis_url: str,
                 database_url: str) -> None:
        self.plan = plan
        self.recorder = recorder
        self.port = port
        self.publish_token = publish_token
        self.redis_url = redis_url
        self.database_url = database_url
        self.rng = random.Random(f"{plan.seed}:producers")
        self.counters: Dict[str, int] = {}
        self.in_flight: Dict[str, int] = {}
        self.python_queue: queue.Queue[Optional[Tuple[str, List[Tuple[str, Event]]]]] = queue.Queue()
        self.last_emit = -EMIT_EVERY_S
        self.tasks: Set[asyncio.Task[None]] = set()

    def tag(self, run_id: str) -> str:
        number = self.counters.get(run_id, 0) + 1
        self.counters[run_id] = number
        return f"{run_id.split('-')[1]}.{number}"

    # -- HTTP publish API --------------------------------------------------------------

    async def publish_http(self, run_id: str, events: List[Tuple[str, Event]], form: str) -> None:
        if form == "single":
            body = json.dumps({"type": events[0][1][0], **events[0][1][1]}).encode()
            content_type = "application/json"
        elif form == "array":
            body = json.dumps([{"type": event_type, **payload} for _, (event_type, payload) in events]).encode()
            content_type = "application/json"
        else:
            body = "".join(json.dumps({"type": event_type, **payload}) + "\n"
                           for _, (event_type, payload) in events).encode()
            content_type = "application/x-ndjson"
        headers = {"Authorization": f"Bearer {self.publish_token}", "Content-Type": content_type}
        record: Dict[str, Any] = {"via": f"http-{form}", "r": run_id, "tags": [tag for tag, _ in events],
                                  "types": [event[0] for _, event in events], "ts": self.recorder.now(), "tries": []}
        while True:
            try:
                status, answer_headers, answer = await asyncio.wait_for(
                    http_request(self.port, f"/api/v1/runs/{run_id}/events", headers, body), REQUEST_TIMEOUT_S)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as error:
                record["tries"].append([self.recorder.now(), type(error).__name__])
                record["ambiguous"] = True
                await asyncio.sleep(1)
                continue
            text = answer.decode("utf-8", "replace")
            if status == 202:
                parsed = json.loads(text)
                record["ids"] = [parsed["id"]] if form == "single" else parsed["ids"]
                record["ta"] = self.recorder.now()
                break
            record["tries"].append([self.recorder.now(), status, text[:200]])
            if status in (502, 504):
                record["ambiguous"] = True
            elif status != 503:
                record["ta"] = self.recorder.now()
                break  # a refusal: recorded, never retried (the checker reports it)
            await asyncio.sleep(float(answer_headers.get("retry-after", "1")))
        self.recorder.write(record)

    # -- Python worker publisher (a thread: it is synchronous) -------------------------

    def python_thread(self) -> None:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from sentri.worker_publisher import RunEventPublisher

        publisher = RunEventPublisher(self.redis_url, database_url=self.database_url, timeout_s=5.0)
        try:
            while True:
                item = self.python_queue.get()
                if item is None:
                    return
                run_id, events = item
                record: Dict[str, Any] = {"via": "python", "r": run_id, "tags": [tag for tag, _ in events],
                                          "types": [event[0] for _, event in events], "ts": self.recorder.now(),
                                          "tries": []}
                while True:
                    try:
                        results = publisher.publish_many([(run_id, event_type, payload)
                                                          for _, (event_type, payload) in events])
                    except Exception as error:  # redis or database: retried (the DB write may have happened)
                        record["tries"].append([self.recorder.now(), f"{type(error).__name__}: {error}"[:200]])
                        record["ambiguous"] = True
                        time.sleep(1)
                        continue
                    record["ids"] = [event_id for event_id, _ in results]
                    record["ta"] = self.recorder.now()
                    break
                self.recorder.write(record)
                self.loop.call_soon_threadsafe(self.finished, run_id)
        finally:
            publisher.close()

    # -- sentri emit ----------------------------------------------------------------------

    async def publish_emit(self, run_id: str, events: List[Tuple[str, Event]]) -> None:
        ndjson = "".join(json.dumps({"type": event_type, **payload}) + "\n" for _, (event_type, payload) in events)
        env = {**os.environ, "REDIS_URL": self.redis_url, "DATABASE_URL": self.database_url}
        record: Dict[str, Any] = {"via": "emit", "r": run_id, "tags": [tag for tag, _ in events],
                                  "types": [event[0] for _, event in events], "ts": self.recorder.now(), "tries": []}
        while True:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sentri.cli", "emit", run_id, "--ndjson", "-", env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await process.communicate(ndjson.encode())
            if process.returncode == 0:
                ids = [line.split(" as ")[1].split(";")[0] for line in out.decode().splitlines()
                       if line.startswith("published ")]
                record["ids"] = [None if event_id == "None" else event_id for event_id in ids]
                record["ta"] = self.recorder.now()
                break
            record["tries"].append([self.recorder.now(), f"exit {process.returncode}",
                                    err.decode("utf-8", "replace")[-200:]])
            record["ambiguous"] = True
            await asyncio.sleep(1)
        self.recorder.write(record)

    # -- the schedule ---------------------------------------------------------------------

    def finished(self, run_id: str) -> None:
        self.in_flight[run_id] -= 1

    def start(self, run_id: str, coroutine: Any) -> None:
        self.in_flight[run_id] = self.in_flight.get(run_id, 0) + 1

        async def tracked() -> None:
            try:
                await coroutine
            finally:
                self.finished(run_id)

        task = asyncio.ensure_future(tracked())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def end_run(self, run_id: str) -> None:
        while self.in_flight.get(run_id, 0):
            await asyncio.sleep(0.2)
        tag = f"{run_id.split('-')[1]}.done"
        count = self.counters.get(run_id, 0)
        await self.publish_http(run_id, [(tag, ("done", {"status": "completed", "passed": count, "failed": 0,
                                                         "total": count, "tag": f"soak:{tag}"}))], "single")

    async def main(self, t0: float) -> None:
        self.loop = asyncio.get_running_loop()
        thread = threading.Thread(target=self.python_thread, daemon=True)
        thread.start()
        runs = self.plan.runs()
        per_run_s = self.plan.events_per_s / self.plan.concurrent_runs
        types = [name for name, _ in EVENT_MIX]
        type_weights = [weight for _, weight in EVENT_MIX]
        channels = [name for name, _ in CHANNELS]
        channel_weights = [weight for _, weight in CHANNELS]
        ended: set = set()
        enders: List[asyncio.Task[None]] = []
        await asyncio.sleep(max(0.0, t0 - time.time()))
        tick = 0
        while True:
            now = time.time() - t0
            for run_id, start, end in runs:
                if run_id in ended:
                    continue
                if now >= end:
                    ended.add(run_id)
                    enders.append(asyncio.ensure_future(self.end_run(run_id)))
                    continue
                if now < start:
                    continue
                count = int(per_run_s) + (1 if self.rng.random() < per_run_s % 1 else 0)
                if not count:
                    continue
                events = [(tag, make_event(self.rng, event_type, tag)) for event_type in
                          self.rng.choices(types, type_weights, k=count) for tag in [self.tag(run_id)]]
                channel = self.rng.choices(channels, channel_weights)[0]
                if now - self.last_emit >= EMIT_EVERY_S:
                    self.last_emit = now
                    self.start(run_id, self.publish_emit(run_id, events))
                elif channel == "python":
                    self.in_flight[run_id] = self.in_flight.get(run_id, 0) + 1
                    self.python_queue.put((run_id, events))
                else:
                    form = "single" if len(events) == 1 else self.rng.choice(("array", "ndjson"))
                    self.start(run_id, self.publish_http(run_id, events, form))
            if len(ended) == len(runs):
                break
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick - time.time()))
        await asyncio.gather(*enders)
        self.python_queue.put(None)
        thread.join()


def main() -> None:
    plan_json, t0, port, publish_token, redis_url, database_url, record_file = sys.argv[1:8]
    recorder = Recorder(record_file, float(t0))
    try:
        run_loop(Producers(Plan.from_json(plan_json), recorder, int(port), publish_token, redis_url,
                           database_url).main(float(t0)))
    finally:
        recorder.close()


if __name__ == "__main__":
    main()
