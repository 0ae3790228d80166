"""Fixtures for relay tests: a private Redis a test may kill, pause and restart on the same port,
and ``sentri serve`` as a separate process (another instance on the same Redis and database)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import redis
import redis.asyncio
import redis.client

from .conftest import ARTIFACT_SECRET, JWT_SECRET
from .frames import open_live
from .services import Pausable, RedisServer, stop_process


class RelayRedis(RedisServer, Pausable):
    """``RedisServer`` plus what relay tests do to it: pause (a Redis that stops answering)."""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused server cannot die
        super().stop()

    def client(self) -> redis.Redis[bytes]:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def channels(self) -> List[bytes]:
        with self.client() as client:
            return sorted(client.pubsub_channels())

    def subscribers(self, channel: str) -> int:
        with self.client() as client:
            return int(client.pubsub_numsub(channel)[0][1])

    def publish(self, channel: str, message: bytes) -> int:
        with self.client() as client:
            return int(client.publish(channel, message))

    def subscriber(self, channel: str) -> redis.client.PubSub:
        """A pub/sub connection subscribed to ``channel``, its confirmation read."""
        subscriber = self.client().pubsub()
        subscriber.subscribe(channel)
        confirmation = subscriber.get_message(timeout=5)
        assert confirmation is not None and confirmation["type"] == "subscribe", confirmation
        return subscriber

    async def listen(self, channel: str) -> Tuple[redis.asyncio.Redis[bytes], redis.asyncio.client.PubSub]:
        """An asyncio client and its pub/sub connection subscribed to ``channel``, its confirmation read."""
        client = redis.asyncio.Redis.from_url(self.url)
        pubsub = client.pubsub()
        await pubsub.subscribe(channel)
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
        return client, pubsub


@contextlib.contextmanager
def private_redis(folder: Any) -> Iterator[RelayRedis]:
    """A Redis with its files in ``folder`` (made here), not started yet; stopped on the way out."""
    folder.mkdir()
    server = RelayRedis(str(folder))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Any) -> Iterator[RelayRedis]:
    with private_redis(tmp_path / "redis") as server:
        server.start()
        yield server


@pytest.fixture
def redis_not_started(tmp_path: Any) -> Iterator[RelayRedis]:
    """A Redis the test starts itself (its port is chosen, nothing listens there yet)."""
    with private_redis(tmp_path / "redis") as server:
        yield server


LISTENING = re.compile(r"listening on http://[^:]+:(\d+)")
RELAY_CONNECTED = re.compile(r"relay connected to redis")
# Instance A's settings in relay tests: reconnect within 0.2 s, and clients are told to retry at once.
FAST_RELAY = {"relay_retry_max_s": 0.2, "retry_ms": 0}


class SentriProcess:
    """``sentri serve`` in a child process; its log lines are collected as they come."""

    def __init__(self, env: Dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sentri.cli", "serve"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.lines: List[str] = []
        self._lock = threading.Condition()
        self._pumping = threading.Thread(target=self._pump, daemon=True)
        self._pumping.start()
        line = self.wait_for_line(LISTENING, timeout_s=20)
        match = LISTENING.search(line)
        assert match is not None
        self.port = int(match.group(1))

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self._lock:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._lock.notify_all()
        with self._lock:
            self.lines.append("<exited>")
            self._lock.notify_all()

    def count(self, pattern: re.Pattern[str]) -> int:
        with self._lock:
            return sum(1 for line in self.lines if pattern.search(line))

    def wait_for_line(self, pattern: re.Pattern[str], timeout_s: float = 10.0, occurrence: int = 1) -> str:
        """Block until the ``occurrence``-th log line matching ``pattern`` (run it in an executor)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                found = [line for line in self.lines if pattern.search(line)]
                if len(found) >= occurrence:
                    return found[occurrence - 1]
                if "<exited>" in self.lines:
                    raise RuntimeError("sentri exited:\n" + "\n".join(self.lines))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no log line {pattern.pattern!r}; got:\n" + "\n".join(self.lines))
                self._lock.wait(remaining)

    async def wait_for(self, pattern: re.Pattern[str], timeout_s: float = 10.0, occurrence: int = 1) -> str:
        import asyncio

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.wait_for_line, pattern, timeout_s, occurrence)

    def stop(self) -> None:
        stop_process(self.process)
        self._pumping.join(10)
        if self.process.stderr is not None:
            self.process.stderr.close()


def instance_env(database_url: str, redis_url: str, data_dir: str, **extra: str) -> Dict[str, str]:
    env = {
        "PORT": "0",
        "SENTRI_HOST": "127.0.0.1",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "JWT_SECRET": JWT_SECRET,
        "ARTIFACT_SECRET": ARTIFACT_SECRET,
        "SENTRI_DATA_DIR": data_dir,
        "SENTRI_DB_WORKERS": "2",
        "SENTRI_RELAY_RETRY_MAX_S": "0.2",
        "LOG_LEVEL": "info",
    }
    env.update(extra)
    return env


@contextlib.contextmanager
def second_instance(database_url: str, redis_url: str, data_dir: Any, **extra: str) -> Iterator[SentriProcess]:
    """``sentri serve`` on the test's database and Redis (instance B; clients retry at once), stopped on the way out."""
    process = SentriProcess(instance_env(database_url, redis_url, str(data_dir), SENTRI_RETRY_MS="0", **extra))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def instance_b_env() -> Dict[str, str]:
    """What ``instance_b`` adds to its environment; a test module overrides this fixture to add its own."""
    return {}


@pytest.fixture
def instance_b(settings: Any, redis_server: RelayRedis, tmp_path: Any, world: Any,
               instance_b_env: Dict[str, str]) -> Iterator[SentriProcess]:
    """Instance B, its relay connected before the test begins (``world``: the rows are there first)."""
    with second_instance(settings.database_url, redis_server.url, tmp_path, **instance_b_env) as process:
        process.wait_for_line(RELAY_CONNECTED)
        yield process


async def live_on_both(port: int, instance_b: SentriProcess, world: Any) -> Tuple[Any, Any]:
    """A live stream of ``world``'s run on this process (instance A), then one on instance B."""
    return await open_live(port, world), await open_live(instance_b.port, world)
