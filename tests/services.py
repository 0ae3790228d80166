"""Private servers for tests that stop, kill or restart a service: never the shared ones.

Each helper picks a free port (bind to port 0, read it, release it) and a temporary folder,
and runs the real binary as a child process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from typing import Collection, List, Optional


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_ports(count: int, avoid: Collection[int] = ()) -> List[int]:
    """``count`` different ports free now, none of them in ``avoid``: held bound together while
    they are chosen (``free_port`` called twice can give the same port back)."""
    probes: List[socket.socket] = []
    try:
        while len(probes) < count:
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind(("127.0.0.1", 0))
            if probe.getsockname()[1] in avoid:
                probe.close()
                continue
            probes.append(probe)
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def wait_for_port(port: int, timeout_s: float = 10.0, process: Optional[subprocess.Popen] = None) -> None:  # type: ignore[type-arg]
    """Block until something accepts TCP connections on 127.0.0.1:port (a child's startup)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s") from None
            time.sleep(0.02)


def stop_process(process: subprocess.Popen, timeout_s: float = 10.0) -> None:  # type: ignore[type-arg]
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; reaped either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_until(condition, timeout_s: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    """Await a state change that has no event to wait on (another process's), checking often."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout_s}s")
        await asyncio.sleep(0.02)


class Pausable:
    """A child process a test can freeze (SIGSTOP: it stops answering, its sockets stay open)
    and thaw again: a server that hangs rather than dies."""

    process: Optional[subprocess.Popen]  # type: ignore[type-arg]

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


class RedisServer:
    """A private ``redis-server`` that a test may stop and start again: no persistence, or with
    ``appendonly`` an append-only file in ``folder``, so a restart (SIGTERM, then ``start``)
    keeps every key (the soak's Redis restarts keep the runs' history)."""

    def __init__(self, folder: str, appendonly: bool = False) -> None:
        self.folder = folder
        self.appendonly = appendonly
        self.port = free_port()
        self.process: Optional[subprocess.Popen] = None  # type: ignore[type-arg]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args: List[str] = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "yes" if self.appendonly else "no", "--dir", self.folder]
        with open(os.path.join(self.folder, f"redis-{self.port}.log"), "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, process=self.process)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
