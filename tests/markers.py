"""Markers that say what a test needs beyond Python, so a tox env can leave it out.

``redis``: the test needs a Redis server. It is added by itself to every test that uses a
fixture whose name contains "redis" (``redis_server``, ``redis_not_started``, ...); a test
that reaches Redis another way marks itself ``@pytest.mark.redis``. The tox ``noredis`` env
deselects them (``-m "not redis"``; pytest reports them as deselected, not skipped), and the
rest of the suite runs with no Redis at all, on the in-process bus.

``redis_cluster``: the test starts a Redis Cluster (6 ``redis-server`` processes,
``tests/redis_cluster.py``); such a test is marked ``redis`` too (its fixture's name says so),
so noredis leaves it out with the others, and ``-m "not redis_cluster"`` leaves out only these.
"""

from __future__ import annotations

from typing import Any, List

import pytest

__all__ = ["pytest_collection_modifyitems", "pytest_configure"]


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "redis: needs a Redis server; deselected in the tox noredis env")
    config.addinivalue_line("markers", "redis_cluster: starts a Redis Cluster of 6 redis-server processes")


def pytest_collection_modifyitems(config: Any, items: List[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        if any("redis" in name for name in names):
            item.add_marker(pytest.mark.redis)
        if any(name.startswith("redis_cluster") for name in names):
            item.add_marker(pytest.mark.redis_cluster)
