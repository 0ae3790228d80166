"""The ``sentri`` console script run in a subprocess, with none of the test process's settings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
from typing import Any, AsyncIterator, Dict, Optional, Tuple

from sentri.config import SETTINGS

SENTRI = os.path.join(os.path.dirname(sys.executable), "sentri")


def clean_env(**values: str) -> Dict[str, str]:
    """The test process's environment without any setting, plus ``values``."""
    env = {key: value for key, value in os.environ.items()
           if key not in {setting.name for setting in SETTINGS} and not key.startswith("SENTRI_")}
    env.update(values)
    return env


def sentri(*args: str, env: Any = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SENTRI, *args], env=env or clean_env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def sentri_emit(*args: str, redis_url: Optional[str] = None, database_url: Optional[str] = None,
                **settings: str) -> subprocess.CompletedProcess[bytes]:
    """``sentri emit *args`` with the test process's environment but only the REDIS_URL and
    DATABASE_URL given, plus any other ``settings`` (environment variables)."""
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "DATABASE_URL")}
    env.update(settings)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "-m", "sentri.cli", "emit", *args], env=env, capture_output=True,
                          timeout=30, check=False)


async def run_sentri(*args: str, env: Dict[str, str]) -> Tuple[Any, str, str]:
    process = await asyncio.create_subprocess_exec(SENTRI, *args, env=env, stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, stdout.decode(), stderr.decode()


def assert_one_line_failure(result: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(r"sentri: " + pattern, lines[0]), lines[0]


class Demo:
    """A running ``sentri demo``: its stdout read line by line, its stderr drained all along."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None and process.stderr is not None
        self.process = process
        self.stdout = process.stdout
        # Drained all along: a full pipe would stall the demo.
        self.stderr = asyncio.ensure_future(process.stderr.read())

    async def curl_command(self, pattern: str) -> re.Match[str]:
        """The first line of output matching ``pattern`` (the demo prints a curl command to try)."""
        while True:
            line = (await asyncio.wait_for(self.stdout.readline(), 20)).decode()
            assert line, "the demo ended before printing a curl command"
            match = re.search(pattern, line)
            if match:
                return match

    async def exit_code(self) -> int:
        return await asyncio.wait_for(self.process.wait(), 30)

    async def stderr_tail(self) -> str:
        return (await self.stderr).decode()[-2000:]


@contextlib.asynccontextmanager
async def running_demo(*args: str, env: Dict[str, str]) -> AsyncIterator[Demo]:
    """``sentri demo *args``, killed on the way out if it is still running."""
    process = await asyncio.create_subprocess_exec(
        SENTRI, "demo", *args, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    demo = Demo(process)
    try:
        yield demo
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await demo.stderr
