"""Markers that say what a test needs beyond Python, so a tox env can leave it out.

``redis``: the test needs a Redis server. It is added by itself to every test that uses a
fixture whose name contains "redis" (``redis_server``, ``redis_not_started``, ...); a test
that reaches Redis another way marks itself ``@pytest.mark.redis``. The tox ``noredis`` env
deselects them (``-m "not redis"``; pytest reports them as deselected, not skipped), and the
rest of the suite runs with no Redis at all, on the in-process bus.

``redis_cluster``: the test starts a Redis Cluster (6 ``redis-server`` processes,
``tests/redis_cluster.py``); such a test is marked ``redis`` too (its fixture's name says so),
so noredis leaves it out with the others, and ``-m "not redis_cluster"`` leaves out only these.

``soak``: the one-minute fault-injecting soak of the whole deployment (``tests/test_soak.py``,
``bench/soak.py``): minutes of a whole machine, so it runs in one env only. It is deselected
(reported as deselected, never skipped) unless the ``-m`` expression names it: ``-m soak`` runs
it alone, ``-m "soak or not soak"`` with everything else.
"""

from __future__ import annotations

from typing import Any, List

import pytest

__all__ = ["add_markers", "pytest_collection_modifyitems"]


def add_markers(config: Any) -> None:
    config.addinivalue_line("markers", "redis: needs a Redis server; deselected in the tox noredis env")
    config.addinivalue_line("markers", "redis_cluster: starts a Redis Cluster of 6 redis-server processes")
    config.addinivalue_line("markers", "soak: the fault-injecting soak (bench/soak.py); runs only when -m names it")


def pytest_collection_modifyitems(config: Any, items: List[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        if any("redis" in name for name in names):
            item.add_marker(pytest.mark.redis)
        if any(name.startswith("redis_cluster") for name in names):
            item.add_marker(pytest.mark.redis_cluster)
    if "soak" not in (config.getoption("markexpr") or ""):
        deselected = [item for item in items if item.get_closest_marker("soak") is not None]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if item.get_closest_marker("soak") is None]
