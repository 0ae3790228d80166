"""The ``sentri`` console script, run for real in a subprocess: help, bad settings, token, demo."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from sentri.cli import build_parser
from sentri.config import SETTINGS
from sentri.runtime import run

from .conftest import JWT_SECRET
from .console import SENTRI, assert_one_line_failure, clean_env, run_sentri, running_demo, sentri
from .frames import next_data
from .sseclient import open_request


def subcommands():
    parser = build_parser()
    (commands,) = [action for action in parser._actions if action.dest == "command"]
    return sorted(commands.choices)


def test_the_console_script_is_installed_beside_the_interpreter():
    assert os.access(SENTRI, os.X_OK), SENTRI


def test_sentri_help_names_every_subcommand():
    result = sentri("--help")
    assert result.returncode == 0 and result.stderr == ""
    for command in ("serve", "demo", "token"):
        assert re.search(rf"^\s+{command}\s+\S", result.stdout, re.M), command


@pytest.mark.parametrize("command", subcommands())
def test_each_subcommand_help_lists_every_setting_with_its_flag_and_variable(command):
    result = sentri(command, "--help")
    assert result.returncode == 0 and result.stderr == ""
    text = re.sub(r"\s+", " ", result.stdout)
    for setting in SETTINGS:
        assert setting.flag in text, (command, setting.flag)
        assert f"env {setting.name};" in text, (command, setting.name)


@pytest.mark.parametrize(
    "database_url, message",
    [
        ("mysql://user@host/db", r"DATABASE_URL: unsupported scheme 'mysql' \(use sqlite:/// or postgres://\)"),
        ("sqlite:////no/such/folder/x.db", r"DATABASE_URL: folder /no/such/folder does not exist"),
        ("postgres://", r"DATABASE_URL: a PostgreSQL URL is postgres://user:password@host:port/database"),
        ("postgres://postgres@127.0.0.1:1/test",
         # libpq 14+ says "connection to server at ... failed: ..."; older libpq (psycopg2-binary
         # 2.9.0, the oldest env) "could not connect to server: ...".
         r"DATABASE_URL: cannot open the database \(OperationalError: "
         r"(connection to server at .+ failed|could not connect to server): .+\)"),
        ("postgres://h:notaport/db", r"DATABASE_URL: the port is not a number"),
    ],
)
def test_an_unusable_database_url_fails_at_start_with_one_line(tmp_path, database_url, message):
    env = clean_env(JWT_SECRET=JWT_SECRET, DATABASE_URL=database_url, PORT="0")
    assert_one_line_failure(sentri("serve", env=env), message)


def test_a_database_url_with_a_password_never_shows_the_password(tmp_path):
    env = clean_env(JWT_SECRET=JWT_SECRET, DATABASE_URL="postgres://postgres:hunter2secret@127.0.0.1:1/test")
    result = sentri("serve", env=env)
    assert result.returncode == 2
    assert "hunter2secret" not in result.stderr + result.stdout


def test_serve_without_jwt_secret_fails_with_one_line(tmp_path):
    env = clean_env(SENTRI_DATA_DIR=str(tmp_path), PORT="0")
    assert_one_line_failure(sentri("serve", env=env),
                            r"JWT_SECRET is not set: the server cannot check tokens without it")


@pytest.mark.parametrize("source", ["env", "flag"])
def test_a_port_that_is_not_an_integer_fails_with_one_line(tmp_path, source):
    env = clean_env(JWT_SECRET=JWT_SECRET, SENTRI_DATA_DIR=str(tmp_path))
    if source == "env":
        env["PORT"] = "eighty"
        result = sentri("serve", env=env)
        assert_one_line_failure(result, r"environment variable PORT: expected integer, got 'eighty'")
    else:
        result = sentri("serve", "--port", "eighty", env=env)
        assert_one_line_failure(result, r"flag for PORT: expected integer, got 'eighty'")


def test_a_negative_setting_fails_with_one_line(tmp_path):
    env = clean_env(JWT_SECRET=JWT_SECRET, SENTRI_DATA_DIR=str(tmp_path), SSE_MAX_LISTENERS_PER_RUN="0")
    assert_one_line_failure(sentri("serve", env=env),
                            r"environment variable SSE_MAX_LISTENERS_PER_RUN: must be at least 1, got '0'")


def test_a_port_in_use_fails_with_one_line(tmp_path):
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = clean_env(JWT_SECRET=JWT_SECRET, SENTRI_DATA_DIR=str(tmp_path))
        result = sentri("serve", "--port", str(port), env=env)
        assert_one_line_failure(result, rf"PORT: 127\.0\.0\.1:{port} is already in use")
    finally:
        taken.close()


def test_token_for_an_unknown_user_fails_with_one_line(tmp_path):
    env = clean_env(JWT_SECRET=JWT_SECRET, SENTRI_DATA_DIR=str(tmp_path))
    assert_one_line_failure(sentri("token", "--user", "USR-nobody", env=env), r"--user: no user with id 'USR-nobody'")


@pytest.mark.gen_test(timeout=30)
async def test_sentri_token_prints_a_token_the_server_accepts(port, world, settings):
    env = clean_env(JWT_SECRET=JWT_SECRET, DATABASE_URL=settings.database_url)
    code, stdout, stderr = await run_sentri("token", "--user", "USR-1", "--workspace", "WS-1", env=env)
    assert code == 0, stderr
    token = stdout.strip()
    assert stdout == token + "\n" and token.count(".") == 2
    response = await open_request(port, world.events_path(token=token))
    assert response.status == 200
    assert (await next_data(response)).startswith(b'data: {"type":"snapshot","run":{"id":"RUN-1",')
    # Signed with another secret, the same command's token is refused.
    env["JWT_SECRET"] = "some-other-secret-0123456789abcdef"
    code, stdout, _ = await run_sentri("token", "--user", "USR-1", env=env)
    assert code == 0
    refused = await open_request(port, world.events_path(token=stdout.strip()))
    assert refused.status == 401


@pytest.mark.gen_test(timeout=60)
async def test_sentri_demo_prints_a_curl_whose_url_streams_snapshot_live_logs_and_done(tmp_path):
    env = clean_env(SENTRI_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    async with running_demo("--runs", "1", "--step-s", "0.05", "--port", "0", env=env) as demo:
        url = (await demo.curl_command(r"curl -N '(http://[^']+)'")).group(1)
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1" and parts.port and parts.port != 0
        assert re.fullmatch(r"/api/v1/runs/RUN-\d+/events", parts.path) and parts.query.startswith("token=")
        response = await open_request(parts.port, f"{parts.path}?{parts.query}")
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream"
        snapshot = await next_data(response)
        assert snapshot.startswith(b'data: {"type":"snapshot","run":{"id":"' + parts.path.split("/")[4].encode())
        kinds = []
        while True:
            frame = await next_data(response, timeout=20)
            kinds.append(frame[len(b'data: {"type":"'):].split(b'"')[0].decode())
            if kinds[-1] == "done":
                break
        assert "log" in kinds and "result" in kinds
        assert re.fullmatch(rb'data: \{"type":"done","status":"completed","passed":\d,"failed":\d,"total":5,'
                            rb'"testsGenerated":5\}\n\n', frame)
        assert await response.server_closed()
        code = await demo.exit_code()
        assert code == 0, await demo.stderr_tail()


def test_the_server_runs_on_uvloop_when_installed_and_on_asyncio_without_it():
    uvloop = pytest.importorskip("uvloop")

    async def loop_type():
        return type(asyncio.get_running_loop())

    # In a thread of its own: running a loop replaces the thread's current loop (the test's).
    with ThreadPoolExecutor(max_workers=1) as thread:
        assert thread.submit(lambda: run(loop_type())).result() is uvloop.Loop
        assert thread.submit(lambda: run(loop_type(), use_uvloop=False)).result() is not uvloop.Loop
