"""The fault-injecting soak of the whole deployment, one minute of it (bench/soak.py).

Three ``sentri serve`` instances behind the real nginx, a private Redis with an append-only
file and SQLite, seeded clients, producers through all three ways in, and a fault every few
seconds (instances killed and drained, Redis paused and restarted, nginx reloaded, the database
locked, clients stalled). The checker's verdict must be clean: nothing lost, nothing twice,
nothing out of order, every stream ended on its run's done, every log line in run_logs, no
unexpected 5xx. Memory is reported but not judged: a minute says nothing about growth (the
long run in bench/README.md does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT_SOAK = ["--duration", "60", "--streams", "120", "--rate", "40", "--fault-every", "4", "--warmup", "8",
              "--seed", "14", "--instances", "3", "--client-processes", "1", "--rss-target", "0"]


@pytest.mark.soak
@pytest.mark.redis
@pytest.mark.timeout(600)
def test_a_minute_of_faults_under_load_loses_nothing_duplicates_nothing_and_ends_every_stream(tmp_path):
    out = tmp_path / "verdict"
    finished = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "soak.py"), *SHORT_SOAK,
                               "--out", str(out), "--work", str(tmp_path / "work")],
                              capture_output=True, text=True, timeout=540)
    assert finished.returncode == 0, finished.stdout[-6000:] + finished.stderr[-3000:]
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["clean"] is True
    assert set(verdict["problems"].values()) == {0}
    # It really ran: events went through every way in and were checked, faults of every kind came.
    assert set(verdict["published"]) == {"http", "python", "emit"}
    assert verdict["counts"]["events checked"] > 5000
    assert verdict["counts"]["subscriptions ending done"] > 50
    assert set(verdict["faults"]) == {"instance_kill", "instance_term", "redis_pause", "redis_restart",
                                      "nginx_reload", "db_stall", "client_stall"}
    assert "# Soak verdict: CLEAN" in finished.stdout
