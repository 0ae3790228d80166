"""The slow-viewer screencast (issue 12): one viewer reading at 200 KB/s while a run streams a
5-frame/s screencast of 150 KB ``frame`` events and log lines, all through the real publish API.

    python bench/slow_viewer.py [--seconds 300] [--json FILE]

Counts the viewer's disconnects (it reconnects with Last-Event-ID if cut), the log lines
published and received (none may be lost), the frames it was shown, and how far behind the
newest frame it was when publishing stopped. A real TCP socket with a 32 KB receive buffer,
read on a thread at the given rate; the server is ``bench/serve_bench.py`` (the real app).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scenarios import Server, log, token  # noqa: E402

PUBLISH_TOKEN = "bench-publish-token-0123456789"


class Viewer(threading.Thread):
    def __init__(self, port: int, path: str, rate: int) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.rate = port, path, rate
        self.disconnects = 0
        self.logs: List[str] = []
        self.frames: List[int] = []
        self.frame_seen_at: Dict[int, float] = {}
        self.last_id: Optional[str] = None
        self.bytes = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self._read_one_connection():
                return
            self.disconnects += 1
            log(f"viewer cut off ({self.disconnects}); reconnecting from {self.last_id}")

    def _read_one_connection(self) -> bool:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.connect(("127.0.0.1", self.port))
        resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
        # HTTP/1.0: a close-delimited body, no chunked framing to undo here.
        sock.sendall(f"GET {self.path} HTTP/1.0\r\nHost: x\r\n{resume}\r\n".encode())
        sock.settimeout(30)
        buffer, head_done, step_s = b"", False, 0.05
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                budget = int(self.rate * step_s)
                while budget > 0:
                    piece = sock.recv(min(budget, 16384))
                    if not piece:
                        return self.stop.is_set()
                    self.bytes += len(piece)
                    budget -= len(piece)
                    buffer += piece
                    if not head_done and b"\r\n\r\n" in buffer:
                        buffer, head_done = buffer.split(b"\r\n\r\n", 1)[1], True
                    if head_done:
                        *blocks, buffer = buffer.split(b"\n\n")
                        for block in blocks:
                            self._event(block)
                time.sleep(max(0.0, step_s - (time.monotonic() - started)))
            return True
        except OSError:
            return self.stop.is_set()
        finally:
            sock.close()

    def _event(self, block: bytes) -> None:
        event_id, data = None, None
        for line in block.split(b"\n"):
            if line.startswith(b"id: "):
                event_id = line[4:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]
        if data is None:
            return
        if event_id:
            self.last_id = event_id
        if data.startswith(b'{"type":"log"'):
            self.logs.append(json.loads(data)["message"])
        elif data.startswith(b'{"type":"frame"'):
            number = int(data[data.index(b'"n":') + 4:data.index(b",", data.index(b'"n":'))])
            self.frames.append(number)
            self.frame_seen_at[number] = time.monotonic()


def publisher(port: int, seconds: float, fps: int, frame_chars: int, logs_per_s: int,
              sent: Dict[str, Any]) -> None:
    image = base64.b64encode(os.urandom(frame_chars * 3 // 4)).decode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {PUBLISH_TOKEN}", "Content-Type": "application/json"}
    started = time.monotonic()
    tick_s = 1.0 / max(fps, logs_per_s)
    n = 0
    while time.monotonic() - started < seconds:
        due = started + n * tick_s
        time.sleep(max(0.0, due - time.monotonic()))
        bodies = []
        if n % max(1, int(round(1 / (fps * tick_s)))) == 0:
            bodies.append({"type": "frame", "n": sent["frames"], "image": image})
            sent["frame_at"][sent["frames"]] = time.monotonic()
            sent["frames"] += 1
        bodies.append({"type": "log", "message": f"[2026-01-01T00:00:00.000Z] line {sent['logs']}"})
        sent["logs"] += 1
        for body in bodies:
            connection.request("POST", "/api/v1/runs/run-0/events", json.dumps(body), headers)
            response = connection.getresponse()
            response.read()
            if response.status != 202:
                sent["errors"] += 1
        n += 1
    connection.close()
    sent["stopped_at"] = time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--rate", type=int, default=200_000, help="viewer read rate, bytes/s")
    parser.add_argument("--fps", type=int, default=5)
    parser.add_argument("--frame-bytes", type=int, default=150_000)
    parser.add_argument("--logs-per-s", type=int, default=10)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    server = Server(extra_env={"SENTRI_PUBLISH_TOKEN": PUBLISH_TOKEN})
    try:
        viewer = Viewer(server.port, f"/api/v1/runs/run-0/events?token={token()}", args.rate)
        viewer.start()
        time.sleep(1.0)
        sent: Dict[str, Any] = {"frames": 0, "logs": 0, "errors": 0, "frame_at": {}}
        cpu0, t0 = server.stat()["cpu_s"], time.monotonic()
        publisher(server.port, args.seconds, args.fps, args.frame_bytes, args.logs_per_s, sent)
        cpu = server.stat()["cpu_s"] - cpu0
        wall = time.monotonic() - t0
        newest = sent["frames"] - 1
        deadline = time.monotonic() + 30
        while newest not in viewer.frame_seen_at and time.monotonic() < deadline:
            time.sleep(0.05)
        caught_up_s = viewer.frame_seen_at.get(newest, float("nan")) - sent["stopped_at"]
        time.sleep(1.0)
        viewer.stop.set()
        expected_logs = [f"[2026-01-01T00:00:00.000Z] line {n}" for n in range(sent["logs"])]
        received = [line for line in viewer.logs if line in set(expected_logs)]
        result = {
            "scenario": "slow-viewer", "seconds": args.seconds, "viewer_rate_bytes_s": args.rate, "fps": args.fps,
            "frame_bytes": args.frame_bytes, "logs_per_s": args.logs_per_s,
            "disconnects": viewer.disconnects, "logs_published": sent["logs"],
            "logs_received": len(set(received)), "logs_lost": len(set(expected_logs) - set(received)),
            "logs_in_order": received == sorted(received, key=lambda text: int(text.rsplit(" ", 1)[1])),
            "frames_published": sent["frames"], "frames_shown": len(viewer.frames),
            "newest_frame_shown_s_after_publishing_stopped": round(caught_up_s, 2),
            "publish_errors": sent["errors"], "viewer_bytes": viewer.bytes,
            "server_cpu_pct": round(100 * cpu / wall, 1),
        }
    finally:
        server.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
