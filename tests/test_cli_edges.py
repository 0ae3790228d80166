"""CLI edges: the demo keeps its secret across restarts and uses JWT_SECRET when given, runs
until told to stop without --runs; token needs a secret; a listen error other than "in use"
and a Ctrl-C before the server is up each end with their own answer."""

from __future__ import annotations

import os
import signal
import stat

import pytest

from sentri import cli
from sentri.tokens import verify

from .conftest import JWT_SECRET
from .console import assert_one_line_failure, clean_env, running_demo, sentri


def test_the_demo_secret_is_made_once_private_and_read_back_on_restart(tmp_path):
    data_dir = str(tmp_path / "data")
    first = cli.demo_secret(data_dir)
    assert len(first) >= 40
    assert stat.S_IMODE(os.stat(os.path.join(data_dir, "demo-jwt-secret")).st_mode) == 0o600
    assert cli.demo_secret(data_dir) == first


def test_token_without_a_secret_fails_with_one_line(tmp_path):
    env = clean_env(SENTRI_DATA_DIR=str(tmp_path))
    assert_one_line_failure(sentri("token", "--user", "USR-1", env=env),
                            r"JWT_SECRET is not set: a token signed with no secret would be refused")


def test_an_address_the_host_does_not_have_fails_to_listen_with_one_line_giving_the_reason(tmp_path):
    # A subprocess, as in use: Tornado's bind_sockets leaves the failed socket to the collector.
    env = clean_env(JWT_SECRET=JWT_SECRET, SENTRI_DATA_DIR=str(tmp_path))
    result = sentri("serve", "--host", "192.0.2.1", "--port", "0", env=env)  # TEST-NET-1: never local
    assert_one_line_failure(result, r"cannot listen on 192\.0\.2\.1:0: Cannot assign requested address")


def test_ctrl_c_before_the_server_is_up_exits_130(monkeypatch):
    # Before run_server installs its signal handlers, SIGINT is Python's KeyboardInterrupt;
    # where it lands (database connect, schema check) cannot be timed from outside.
    def interrupted(settings):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "configure_logging", lambda level, as_json: None)  # keep the test's log handlers
    monkeypatch.setattr(cli, "serve", interrupted)
    monkeypatch.setenv("JWT_SECRET", JWT_SECRET)
    assert cli.main(["serve"]) == 130


@pytest.mark.gen_test(timeout=60)
async def test_the_demo_signs_with_jwt_secret_when_set_and_runs_until_sigterm_without_runs(tmp_path):
    data_dir = tmp_path / "data"
    env = clean_env(SENTRI_DATA_DIR=str(data_dir), JWT_SECRET=JWT_SECRET, PYTHONUNBUFFERED="1")
    async with running_demo("--step-s", "0.05", "--port", "0", env=env) as demo:
        token = (await demo.curl_command(r"curl -N '[^']+\?token=([^']+)'")).group(1)
        identity = verify(token, JWT_SECRET)
        assert identity is not None and identity.workspace_id is not None
        assert not (data_dir / "demo-jwt-secret").exists()
        assert demo.process.returncode is None  # no --runs: it keeps going
        demo.process.send_signal(signal.SIGTERM)
        code = await demo.exit_code()
        assert code == 0, await demo.stderr_tail()
