"""The run page in a real browser: Debian's Chromium, headless, opening the stream with EventSource.

Most tests serve the app in-process (the ``port`` fixture) and emit events through the hub;
the restart test runs ``sentri demo`` as a subprocess on a fixed free port and restarts it.
Every test keeps a screenshot in artifacts/browser/ and fails on any console error (a
Content-Security-Policy violation is one) or uncaught page error.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from typing import Any, Dict, Iterator, List
from urllib.parse import quote

import pytest
from tornado.httpclient import AsyncHTTPClient

from sentri.run_page import run_page
from sentri.writes import append_log

from .browser import WatchedPage, chromium, open_page
from .conftest import JWT_SECRET, token_for
from .services import free_port, wait_for_port
from .sseclient import open_request

SCRIPT_LINE = '[2026-01-01T00:00:02.000Z] <script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
PUBLISH_TOKEN = "test-publish-token"
TESTS = [{"id": "TC-1", "name": "home renders"}, {"id": "TC-2", "name": "login works"},
         {"id": "TC-3", "name": "checkout completes"}]


def page_url(port: int, run_id: str, token: str) -> str:
    return f"http://127.0.0.1:{port}/runs/{run_id}?token={token}"


def assert_clean(page: WatchedPage) -> None:
    assert page.console_errors == []
    assert page.page_errors == []


@pytest.fixture
def live_run(rows: Any, world: Any) -> Dict[str, Any]:
    run = rows.run(world.project, id="RUN-7", tests=TESTS, total=3,
                   results=[{"testId": "TC-1", "testName": "home renders", "status": "passed", "durationMs": 1200}])
    rows.log(run, 1, "[2026-01-01T00:00:00.000Z] Run RUN-7 started: 3 tests")
    rows.log(run, 2, "[2026-01-01T00:00:01.000Z] ✔ TC-1 passed")
    return run


@pytest.mark.gen_test(timeout=90)
async def test_the_page_shows_the_snapshot_then_every_kind_of_live_event(port, world, live_run, context):
    async with chromium() as browser, open_page(browser, page_url(port, "RUN-7", world.token)) as page:
        await page.wait_for_connection("live")
        assert await page.log_lines() == ["[2026-01-01T00:00:00.000Z] Run RUN-7 started: 3 tests",
                                          "[2026-01-01T00:00:01.000Z] ✔ TC-1 passed"]
        assert await page.text("#run-id") == "RUN-7"
        assert await page.text("#status") == "running"
        assert await page.text("#progress") == "1 passed · 0 failed · 3 total"
        assert await page.text("#results li[data-test-id=TC-1] .result-status") == "passed"

        jpeg = await page.page.screenshot(type="jpeg", quality=50, clip={"x": 0, "y": 0, "width": 64, "height": 48})
        frame = base64.b64encode(jpeg).decode("ascii")
        hub = context.hub
        hub.emit("RUN-7", "log", {"message": "[2026-01-01T00:00:03.000Z] ▶ TC-2 login works"})
        hub.emit("RUN-7", "result", {"result": {"testId": "TC-2", "testName": "login works", "status": "failed",
                                                "error": "expected heading", "durationMs": 900}})
        hub.emit("RUN-7", "result", {"result": {"testId": "TC-1", "testName": "home renders", "status": "failed"}})
        hub.emit("RUN-7", "screenshot", {"testId": "TC-2", "screenshotPath": "/artifacts/shots/TC-2.png?token=a&exp=1"})
        hub.emit("RUN-7", "frame", {"data": frame})
        hub.emit("RUN-7", "llm_token", {"token": "Generating "})
        hub.emit("RUN-7", "llm_token", {"token": "<b>tests</b>"})

        await page.wait_for_log_count(3)
        await page.page.wait_for_function("() => document.getElementById('llm').value === 'Generating <b>tests</b>'")
        assert (await page.log_lines())[2] == "[2026-01-01T00:00:03.000Z] ▶ TC-2 login works"
        # result upserts by testId: TC-1 is replaced, TC-2 is added, nothing is listed twice
        assert await page.page.eval_on_selector_all(
            "#results li", "items => items.map(i => [i.dataset.testId, i.querySelector('.result-status').textContent])"
        ) == [["TC-1", "failed"], ["TC-2", "failed"]]
        assert await page.text("#progress") == "0 passed · 2 failed · 3 total"
        assert await page.text("#results li[data-test-id=TC-2] .result-error") == "expected heading"
        assert await page.page.get_attribute("#results li[data-test-id=TC-2] a", "href") == \
            "/artifacts/shots/TC-2.png?token=a&exp=1"
        assert await page.page.get_attribute("#frame", "src") == "data:image/jpeg;base64," + frame
        assert await page.page.eval_on_selector("#frame", "img => img.complete && img.naturalWidth") == 64
        assert await page.page.is_hidden("#no-frame")
        assert await page.text("#connection") == "live"
        await page.screenshot("live_events")
        assert page.stream_requests() == [f"http://127.0.0.1:{port}/api/v1/runs/RUN-7/events?token={world.token}"]
        assert_clean(page)


@pytest.mark.gen_test(timeout=90)
async def test_done_ends_the_stream_and_the_page_shows_the_final_status(port, world, live_run, context):
    async with chromium() as browser, open_page(browser, page_url(port, "RUN-7", world.token)) as page:
        await page.wait_for_connection("live")
        context.hub.emit("RUN-7", "done", {"status": "failed", "passed": 2, "failed": 1, "total": 3,
                                           "testsGenerated": 3})
        await page.wait_for_connection("finished")
        assert await page.text("#connection") == "finished"
        assert await page.text("#status") == "failed"
        assert await page.text("#progress") == "2 passed · 1 failed · 3 total"
        assert await page.text("#final") == "Run finished: failed (2 passed, 1 failed, 3 total)"
        assert context.hub.listener_count("RUN-7") == 0
        await page.screenshot("done")
        # the page closed its EventSource on done: it never asked for the stream again
        assert len(page.stream_requests()) == 1
        assert_clean(page)


@pytest.mark.gen_test(timeout=90)
async def test_a_dropped_stream_resumes_from_the_last_event_id_and_shows_each_line_once(port, world, live_run,
                                                                                        context):
    hub = context.hub
    async with chromium() as browser, open_page(browser, page_url(port, "RUN-7", world.token)) as page:
        await page.wait_for_connection("live")
        first_id = hub.emit("RUN-7", "log", {"message": "[2026-01-01T00:00:03.000Z] before the drop"})
        await page.wait_for_log_count(3)
        assert hub.close_where(lambda stream: stream.run_id == "RUN-7", "test_drop") == 1
        await page.page.wait_for_selector("body[data-connection=reconnecting]", state="attached")
        # emitted while the page has no stream: only a resume can bring it
        hub.emit("RUN-7", "log", {"message": "[2026-01-01T00:00:04.000Z] during the drop"})
        await page.wait_for_log_count(4)
        await page.wait_for_connection("live")
        hub.emit("RUN-7", "log", {"message": "[2026-01-01T00:00:05.000Z] after the drop"})
        await page.wait_for_log_count(5)
        assert await page.log_lines() == [
            "[2026-01-01T00:00:00.000Z] Run RUN-7 started: 3 tests",
            "[2026-01-01T00:00:01.000Z] ✔ TC-1 passed",
            "[2026-01-01T00:00:03.000Z] before the drop",
            "[2026-01-01T00:00:04.000Z] during the drop",
            "[2026-01-01T00:00:05.000Z] after the drop",
        ]
        base = f"http://127.0.0.1:{port}/api/v1/runs/RUN-7/events?token={world.token}"
        assert page.stream_requests() == [base, f"{base}&last_event_id={quote(str(first_id), safe='')}"]
        await page.screenshot("resumed")
        assert_clean(page)


@pytest.mark.gen_test(timeout=90)
async def test_a_finished_run_shows_its_final_state_without_going_live(port, world, rows):
    run = rows.run(world.project, id="RUN-8", status="completed", passed=3, failed=0, total=3, tests=TESTS)
    rows.log(run, 1, "[2026-01-01T00:00:00.000Z] done")
    async with chromium() as browser, open_page(browser, page_url(port, "RUN-8", world.token)) as page:
        await page.wait_for_connection("finished")
        assert await page.text("#status") == "completed"
        assert await page.text("#progress") == "3 passed · 0 failed · 3 total"
        assert await page.log_lines() == ["[2026-01-01T00:00:00.000Z] done"]
        assert len(page.stream_requests()) == 1
        assert_clean(page)


@pytest.mark.gen_test(timeout=90)
async def test_a_log_line_holding_script_renders_as_text(port, world, rows, context):
    run = rows.run(world.project, id="RUN-9", tests=TESTS,
                   results=[{"testId": "TC-1", "testName": "<img src=x onerror=\"window.__pwned = 3\">",
                             "status": "<b>passed</b>", "screenshotPath": "javascript:window.__pwned = 4"}])
    rows.log(run, 1, SCRIPT_LINE)
    async with chromium() as browser, open_page(browser, page_url(port, "RUN-9", world.token)) as page:
        await page.wait_for_connection("live")
        context.hub.emit("RUN-9", "log", {"message": "</li><script>window.__pwned = 5</script>"})
        await page.wait_for_log_count(2)
        assert await page.log_lines() == [SCRIPT_LINE, "</li><script>window.__pwned = 5</script>"]
        # the lines are text nodes only: no element was created from them
        assert await page.page.eval_on_selector_all("#log li", "items => items.map(i => i.children.length)") == [0, 0]
        assert await page.text("#results li .result-name") == '<img src=x onerror="window.__pwned = 3">'
        assert await page.text("#results li .result-status") == "<b>passed</b>"
        assert await page.page.query_selector("#results a") is None  # a javascript: path is never linked
        assert await page.page.evaluate("typeof window.__pwned") == "undefined"
        await page.screenshot("script_as_text")
        assert_clean(page)


@pytest.mark.gen_test(timeout=90)
async def test_a_token_for_another_workspace_shows_an_error_not_the_run(port, world, live_run, rows):
    stranger = rows.user(id="USR-9", name="Eve")
    rows.workspace(stranger, id="WS-9")
    async with chromium() as browser, open_page(browser, page_url(port, "RUN-7", token_for(stranger, "WS-9"))) as page:
        await page.wait_for_connection("error")
        assert await page.text("#error-title") == "Run not available"
        assert await page.text("#error-detail") == \
            "This run does not exist or is not in your workspace (project not found)"
        assert await page.page.is_hidden("#run")
        assert await page.log_lines() == []
        await page.screenshot("other_workspace")
        # the refused EventSource and the one fetch that read its status; no retry loop
        assert len(page.stream_requests()) == 2
        assert page.page_errors == []


@pytest.mark.gen_test(timeout=90)
async def test_an_invalid_token_says_so_and_the_cookie_alone_is_enough(port, world, live_run):
    async with chromium() as browser:
        async with open_page(browser, page_url(port, "RUN-7", "not-a-token")) as page:
            await page.wait_for_connection("error")
            assert await page.text("#error-title") == "Not signed in"
            assert await page.text("#error-detail") == \
                "The link's token is missing, invalid or expired (Authentication required.)"
            assert await page.page.is_hidden("#run")
        cookie = {"name": "access_token", "value": world.token, "url": f"http://127.0.0.1:{port}"}
        context = await browser.new_context()
        await context.add_cookies([cookie])
        page = WatchedPage(await context.new_page())
        await page.page.goto(f"http://127.0.0.1:{port}/runs/RUN-7")
        await page.wait_for_connection("live")
        assert await page.text("#status") == "running"
        assert page.stream_requests() == [f"http://127.0.0.1:{port}/api/v1/runs/RUN-7/events"]
        await context.close()


@pytest.mark.gen_test
async def test_the_page_is_served_with_a_policy_allowing_only_its_own_inline_code(port, world):
    response = await open_request(port, f"/runs/RUN-1?token={world.token}")
    assert response.status == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert policy == run_page().content_security_policy
    assert policy.startswith("default-src 'none'; script-src 'sha256-")
    assert "'unsafe-inline'" not in policy and "connect-src 'self'" in policy
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    body = await response.read_to_end()
    assert body == run_page().body
    assert world.token.encode() not in body


@pytest.mark.gen_test
async def test_a_page_for_an_impossible_run_id_is_a_json_404(port):
    response = await open_request(port, "/runs/%00%01")
    assert response.status == 404
    assert await response.read_to_end() == b'{"error":"not found"}'


# -- the restart test: a real server process, restarted while the browser watches --------------

class DemoServer:
    """``sentri demo`` on a fixed port and a SQLite file, started and killed by the test."""

    def __init__(self, port: int, data_dir: str) -> None:
        self.port = port
        self.data_dir = data_dir
        self.process: Any = None
        self.output: List[str] = []

    def start(self) -> None:
        env = {**os.environ, "JWT_SECRET": JWT_SECRET, "LOG_LEVEL": "warn"}
        command = [sys.executable, "-m", "sentri.cli", "demo", "--port", str(self.port), "--data-dir",
                   self.data_dir, "--step-s", "0.25"]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)

    def wait_for_run(self) -> str:
        """Read the demo's output until it announces a run; returns that run's id."""
        for line in self.process.stdout:
            self.output.append(line)
            if line.startswith("Run ") and "is live" in line:
                return line.split()[1]
        raise AssertionError("the demo ended without a run: " + "".join(self.output))

    def crash(self) -> None:
        """SIGKILL: no drain, no goodbye; the browser only sees the connection drop."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process.stdout.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.crash()

    def stored_logs(self, run_id: str) -> List[str]:
        # closing(): sqlite3's own context manager only commits; the connection would stay open.
        with contextlib.closing(sqlite3.connect(os.path.join(self.data_dir, "sentri.db"))) as database:
            rows = database.execute("SELECT message FROM run_logs WHERE runId = ? ORDER BY seq", (run_id,))
            return [message for (message,) in rows]

    def stored_status(self, run_id: str) -> str:
        with contextlib.closing(sqlite3.connect(os.path.join(self.data_dir, "sentri.db"))) as database:
            return str(database.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()[0])


@pytest.fixture
def demo_server(tmp_path: Any) -> Iterator[DemoServer]:
    server = DemoServer(free_port(), str(tmp_path / "demo-data"))
    yield server
    server.stop()


@pytest.mark.gen_test(timeout=120)
async def test_after_a_server_restart_the_browser_reconnects_and_shows_every_log_line_once(demo_server):
    token = token_for({"id": "USR-demo", "name": "Demo User", "email": "demo@sentri.local"}, "WS-demo")
    async with chromium() as browser:  # launched first: the demo's run is only a few seconds long
        demo_server.start()
        run_id = demo_server.wait_for_run()
        async with open_page(browser, page_url(demo_server.port, run_id, token)) as page:
            await watch_through_a_crash(demo_server, page, run_id)


async def watch_through_a_crash(demo_server: DemoServer, page: WatchedPage, run_id: str) -> None:
    await page.wait_for_connection("live")
    shown_at_connect = len(await page.log_lines())
    await page.wait_for_log_count(shown_at_connect + 3)  # live lines arrive while the run goes on
    await page.screenshot("before_restart")

    demo_server.crash()
    await page.page.wait_for_selector("body[data-connection=reconnecting]", state="attached")
    assert (await page.text("#connection")).startswith("reconnecting in ")
    demo_server.start()  # same port, same SQLite file: the interrupted run is marked as such
    await page.wait_for_connection("finished")

    stored = demo_server.stored_logs(run_id)
    lines = await page.log_lines()
    assert lines == stored
    assert len(set(lines)) == len(lines)
    assert await page.text("#status") == demo_server.stored_status(run_id) == "interrupted"
    assert len(page.stream_requests()) >= 2
    await page.screenshot("after_restart")
    assert page.page_errors == []


class ServeProcess:
    """``sentri serve`` on a fixed port, on the test's database, stopped the way systemd does (SIGTERM)."""

    def __init__(self, port: int, database_url: str, log_path: str) -> None:
        self.port = port
        self.log_path = log_path
        self.env = {**os.environ, "JWT_SECRET": JWT_SECRET, "DATABASE_URL": database_url, "LOG_LEVEL": "info",
                    "SENTRI_PUBLISH_TOKEN": PUBLISH_TOKEN, "SENTRI_DRAIN_WINDOW_S": "0.2"}
        self.env.pop("REDIS_URL", None)
        self.process: Any = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "sentri.cli", "serve", "--port", str(self.port)],
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, process=self.process)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return int(self.process.returncode) if self.process is not None else 0
        self.process.send_signal(signal.SIGTERM)
        return int(self.process.wait(timeout=20))

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8") as log:
            return log.read()

    async def publish(self, run_id: str, event: Dict[str, Any]) -> None:
        response = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{self.port}/api/v1/runs/{run_id}/events", method="POST", body=json.dumps(event),
            headers={"Authorization": f"Bearer {PUBLISH_TOKEN}", "Content-Type": "application/json"})
        assert response.code == 202


@pytest.fixture
def serve_process(database_url: str, tmp_path: Any) -> Iterator[ServeProcess]:
    server = ServeProcess(free_port(), database_url, str(tmp_path / "serve.log"))
    yield server
    server.stop()


def stamped(second: int, text: str) -> str:
    return f"[2026-01-01T00:00:{second:02d}.000Z] {text}"


@pytest.mark.gen_test(timeout=120)
async def test_a_run_that_goes_on_across_a_server_restart_ends_with_every_log_line_once(
        serve_process, world, live_run, context):
    serve_process.start()
    async with chromium() as browser, open_page(browser, page_url(serve_process.port, "RUN-7", world.token)) as page:
        await page.wait_for_connection("live")
        await serve_process.publish("RUN-7", {"type": "log", "message": stamped(3, "▶ TC-2 login works")})
        await serve_process.publish("RUN-7", {"type": "log", "message": stamped(4, "✘ TC-2 failed")})
        await page.wait_for_log_count(4)

        assert serve_process.stop() == 0  # graceful: drained, exit status 0
        await page.page.wait_for_selector("body[data-connection=reconnecting]", state="attached")
        # a producer that writes to the database directly (a Node worker) goes on meanwhile
        await context.store.run(lambda: append_log("RUN-7", stamped(5, "written while the server was down")))
        serve_process.start()
        await page.wait_for_log_count(5)
        await page.wait_for_connection("live")

        await serve_process.publish("RUN-7", {"type": "log", "message": stamped(6, "▶ TC-3 checkout completes")})
        await serve_process.publish("RUN-7", {"type": "done", "status": "completed", "passed": 2, "failed": 1,
                                              "total": 3})
        await page.wait_for_connection("finished")
        assert await page.log_lines() == [
            "[2026-01-01T00:00:00.000Z] Run RUN-7 started: 3 tests",
            "[2026-01-01T00:00:01.000Z] ✔ TC-1 passed",
            stamped(3, "▶ TC-2 login works"),
            stamped(4, "✘ TC-2 failed"),
            stamped(5, "written while the server was down"),
            stamped(6, "▶ TC-3 checkout completes"),
        ]
        assert await page.text("#status") == "completed"
        assert await page.text("#final") == "Run finished: completed (2 passed, 1 failed, 3 total)"
        await page.screenshot("across_a_restart")
        assert page.page_errors == []
    log = serve_process.log_text()
    assert "GET /runs/RUN-7 200" in log  # the page and its stream were logged, the token never
    assert world.token not in log and world.token.split(".")[2] not in log
