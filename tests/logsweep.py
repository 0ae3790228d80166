"""Every log line of the test session, searched at the end for the secrets the tests used.

docs/settings.md §4: no token, cookie or signature in any log line. Unit tests of the redaction prove
the patterns; this sweep proves the whole: every record logged in-process during the session
(root logger at DEBUG, through the production formatter and redaction), plus the stderr
files of every subprocess (``sentri serve``, nginx's error and access logs) that tests write
into ``session_log_dir``, are searched for every token minted and every secret configured.
A hit fails the session (an error at the last test's teardown), naming the file, not the secret.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator, List, Set

import pytest

from sentri.logs import PlainFormatter
from sentri.redact import install_redaction

#: Secrets the session handed out: every minted token, every configured secret. Tests add theirs.
SESSION_SECRETS: Set[str] = set()

# Shorter strings would match by accident in unrelated text.
MIN_SECRET_LENGTH = 12


def remember_secret(secret: str) -> str:
    if len(secret) >= MIN_SECRET_LENGTH:
        SESSION_SECRETS.add(secret)
    return secret


def find_secrets(folder: str, secrets: Set[str]) -> List[str]:
    """``file: N secret(s)`` for each log file in ``folder`` holding any of ``secrets``."""
    hits = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        found = [secret for secret in secrets if secret in text]
        if found:
            hits.append(f"{name}: {len(found)} secret(s)")
    return hits


@pytest.fixture(scope="session")
def session_log_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("session-logs"))


@pytest.fixture(scope="session", autouse=True)
def sweep_session_logs_for_secrets(session_log_dir: str) -> Iterator[None]:
    install_redaction()
    handler = logging.FileHandler(os.path.join(session_log_dir, "in-process.log"), encoding="utf-8")
    handler.setFormatter(PlainFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield
    root.removeHandler(handler)
    root.setLevel(previous_level)
    handler.close()
    hits = find_secrets(session_log_dir, SESSION_SECRETS)
    assert not hits, f"secrets found in the session's logs (under {session_log_dir}): {hits}"
