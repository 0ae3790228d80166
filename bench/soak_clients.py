"""Soak clients: many run streams in one asyncio process, each behaving as a browser's EventSource.

A client follows one run at a time (a *subscription*): it opens the stream through nginx,
honours ``retry:``, reconnects with ``Last-Event-ID`` after a dropped or ended response, stops
on ``done`` (or a ``204``), then takes another running run. Its behaviour comes from the
seeded plan (``soak_plan.BEHAVIOURS``); ``client_stall`` faults of the plan make some clients
stop reading for a while. Every frame is recorded: id, type, the event's soak tag and a CRC of
the data line; one JSON line per subscription goes to the history file.

    python bench/soak_clients.py PLAN_JSON T0 PORT TOKEN FIRST COUNT HISTORY_FILE
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import struct
import sys
import time
import zlib
from typing import Any, Dict, List, Optional, Set, Tuple

from soak_plan import Plan

from sentri.runtime import run

TAG = re.compile(rb"soak:([0-9]+\.[0-9a-z]+)")
DEFAULT_RETRY_MS = 3000
# A stall or slow read never lasts past this: the soak's end must still see every stream end.
READ_PIECE = 2048


class Clock:
    def __init__(self, t0: float) -> None:
        self.t0 = t0

    def now(self) -> float:
        return round(time.time() - self.t0, 3)


class Stalls:
    """The plan's client_stall faults, as (start, end) per stalled client."""

    def __init__(self, plan: Plan) -> None:
        self.windows: Dict[int, List[Tuple[float, float]]] = {}
        for at, kind, params in plan.faults():
            if kind != "client_stall":
                continue
            rng = random.Random(params["pick"])
            count = max(1, int(plan.streams * params["stall_share"]))
            for index in rng.sample(range(plan.streams), count):
                self.windows.setdefault(index, []).append((at, at + params["stall_s"]))

    def until(self, client: int, now: float) -> float:
        for start, end in self.windows.get(client, ()):
            if start <= now < end:
                return end
        return 0.0


class Connection:
    """One HTTP request of a subscription and what came back."""

    def __init__(self, clock: Clock, last_event_id: Optional[str]) -> None:
        self.record: Dict[str, Any] = {"t0": clock.now(), "lei": last_event_id, "f": []}
        self.writer: Optional[asyncio.StreamWriter] = None
        self.ending: Optional[str] = None  # set when this client ends the connection itself


async def read_head(reader: asyncio.StreamReader) -> Tuple[int, Dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


class Client:
    def __init__(self, spec: Dict[str, Any], plan: Plan, runs: List[Tuple[str, float, float]], clock: Clock,
                 port: int, token: str, stalls: Stalls, out: Any) -> None:
        self.index = spec["index"]
        self.behaviour = spec["behaviour"]
        self.rng = random.Random(spec["seed"])
        self.plan = plan
        self.runs = runs
        self.clock = clock
        self.port = port
        self.token = token
        self.stalls = stalls
        self.out = out

    def pick_run(self) -> Optional[str]:
        now = self.clock.now()
        running = [run_id for run_id, start, end in self.runs if start <= now < end - 3]
        return self.rng.choice(running) if running else None

    async def live(self) -> None:
        await asyncio.sleep(self.rng.uniform(0, 5))  # arrivals spread over the first seconds
        while self.clock.now() < self.plan.duration_s - 5:
            run_id = self.pick_run()
            if run_id is None:
                await asyncio.sleep(1)
                continue
            record = await self.follow(run_id)
            self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
            if self.behaviour == "churn":
                await asyncio.sleep(self.rng.uniform(0, 2))

    async def follow(self, run_id: str) -> Dict[str, Any]:
        subscription: Dict[str, Any] = {"c": self.index, "b": self.behaviour, "r": run_id, "t0": self.clock.now(),
                                        "conns": []}
        now = self.clock.now()
        leave_at = now + self.rng.uniform(3, 20) if self.behaviour == "churn" else None
        last_id: Optional[str] = None
        retry_ms = DEFAULT_RETRY_MS
        # Nothing may stay open long after the soak: the producers end every run at its end.
        hard_end = self.plan.duration_s + 90
        while True:
            now = self.clock.now()
            if leave_at is not None and now >= leave_at:
                subscription["end"] = "left"
                break
            if now >= hard_end:
                subscription["end"] = "timeout"
                break
            connection = Connection(self.clock, last_id)
            subscription["conns"].append(connection.record)
            drop_at = now + self.rng.uniform(5, 25) if self.behaviour == "drop" else None
            outcome, retry_ms, last_id = await self.connect(run_id, connection, retry_ms, last_id, leave_at, drop_at)
            if outcome in ("done", "204", "left"):
                subscription["end"] = outcome
                break
            wait_s = retry_ms / 1000
            if outcome.startswith("status:"):
                retry_after = connection.record.get("ra")
                wait_s = float(retry_after) if retry_after else wait_s
            await asyncio.sleep(wait_s)
        subscription["t1"] = self.clock.now()
        return subscription

    async def connect(self, run_id: str, connection: Connection, retry_ms: int, last_id: Optional[str],
                      leave_at: Optional[float], drop_at: Optional[float]) -> Tuple[str, int, Optional[str]]:
        record = connection.record
        loop = asyncio.get_running_loop()
        timers: List[asyncio.TimerHandle] = []
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port, limit=16384), 10)
        except (OSError, asyncio.TimeoutError) as error:
            record.update(end=f"connect:{type(error).__name__}", te=self.clock.now())
            return "error", retry_ms, last_id
        connection.writer = writer
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)

        def end_it(why: str) -> None:
            connection.ending = why
            if why == "drop":  # no FIN: the peer only learns when it writes (RST)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()

        for at, why in ((leave_at, "left"), (drop_at, "drop")):
            if at is not None:
                timers.append(loop.call_later(max(0.0, at - self.clock.now()), end_it, why))
        request = (f"GET /api/v1/runs/{run_id}/events?token={self.token} HTTP/1.1\r\nHost: soak\r\n"
                   "Accept: text/event-stream\r\nCache-Control: no-cache\r\n")
        if last_id:
            request += f"Last-Event-ID: {last_id}\r\n"
        try:
            writer.write((request + "\r\n").encode())
            status, headers = await asyncio.wait_for(read_head(reader), 60)
            record.update(st=status, th=self.clock.now())
            if headers.get("sentri-resume"):
                record["sr"] = headers["sentri-resume"]
            if status != 200:
                if "retry-after" in headers:
                    record["ra"] = headers["retry-after"]
                length = int(headers.get("content-length", "0"))
                if length:
                    record["body"] = (await reader.readexactly(length)).decode("utf-8", "replace")
                record.update(end="status" if status != 204 else "204", te=self.clock.now())
                return ("204" if status == 204 else f"status:{status}"), retry_ms, last_id
            outcome, retry_ms, last_id = await self.read_stream(reader, record, headers, retry_ms, last_id)
            record.update(end=outcome, te=self.clock.now())
            return outcome, retry_ms, last_id
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ValueError) as error:
            outcome = connection.ending or f"error:{type(error).__name__}"
            record.update(end=outcome, te=self.clock.now())
            return ("left" if outcome == "left" else "error"), retry_ms, last_id
        finally:
            for timer in timers:
                timer.cancel()
            if not writer.is_closing():
                writer.close()

    async def read_stream(self, reader: asyncio.StreamReader, record: Dict[str, Any], headers: Dict[str, str],
                          retry_ms: int, last_id: Optional[str]) -> Tuple[str, int, Optional[str]]:
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        frames: List[List[Any]] = record["f"]
        buffer = b""
        seen: Set[str] = set()
        while True:
            stalled_until = self.stalls.until(self.index, self.clock.now())
            if stalled_until:
                record.setdefault("stalls", []).append([self.clock.now(), stalled_until])
                await asyncio.sleep(stalled_until - self.clock.now())
            if self.behaviour == "slow":
                await asyncio.sleep(0.05)
            if chunked:
                size_line = await reader.readline()
                if not size_line:
                    return "eof", retry_ms, last_id
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    return "end", retry_ms, last_id
                piece = await reader.readexactly(size + 2)
                buffer += piece[:-2]
            else:
                piece = await reader.read(READ_PIECE)
                if not piece:
                    return "eof", retry_ms, last_id
                buffer += piece
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                event_id = ""
                data = b""
                for line in frame.split(b"\n"):
                    if line.startswith(b"retry: "):
                        retry_ms = int(line[7:])
                    elif line.startswith(b"id: "):
                        event_id = line[4:].decode()
                    elif line.startswith(b"data: "):
                        data = line[6:]
                if not data:
                    continue
                if event_id:
                    last_id = event_id
                event_type = data[9:data.index(b'"', 9)].decode()
                if event_type == "snapshot":
                    tags = sorted({match.decode() for match in TAG.findall(data)})
                    record["snap"] = [event_id, tags]
                    frames.append([event_id, "snapshot", "", zlib.crc32(data)])
                    continue
                match = TAG.search(data, 0, 160)
                tag = match.group(1).decode() if match else ""
                frames.append([event_id, event_type, tag, zlib.crc32(data)])
                if tag:
                    seen.add(tag)
                if event_type == "done":
                    # The server ends the response right after done: the last chunk (or the close).
                    record["done_t"] = self.clock.now()
                    record["after_done"] = await self.read_end(reader, chunked, buffer)
                    return "done", retry_ms, last_id


    async def read_end(self, reader: asyncio.StreamReader, chunked: bool, buffer: bytes) -> Any:
        """What came after done before the response ended: "" when nothing (as it should)."""
        try:
            if chunked:
                size_line = await asyncio.wait_for(reader.readline(), 10)
                if size_line.split(b";")[0].strip() == b"0":
                    return buffer.decode("utf-8", "replace")
                return (buffer + size_line).decode("utf-8", "replace")[:200]
            rest = await asyncio.wait_for(reader.read(), 10)
            return (buffer + rest).decode("utf-8", "replace")[:200]
        except (OSError, asyncio.TimeoutError):
            return "the response did not end within 10 s"


async def main(plan: Plan, t0: float, port: int, token: str, first: int, count: int, history: str) -> None:
    clock = Clock(t0)
    runs = plan.runs()
    stalls = Stalls(plan)
    specs = plan.clients()[first:first + count]
    await asyncio.sleep(max(0.0, t0 - time.time()))
    with open(history, "w", encoding="utf-8") as out:
        clients = [Client(spec, plan, runs, clock, port, token, stalls, out) for spec in specs]
        await asyncio.gather(*(client.live() for client in clients))


if __name__ == "__main__":
    plan_json, t0, port, token, first, count, history = sys.argv[1:8]
    run(main(Plan.from_json(plan_json), float(t0), int(port), token, int(first), int(count), history))
