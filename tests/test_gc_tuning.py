"""The garbage collector's tuning (sentri.runtime): survivors of full collections frozen, thawed on a period."""

from __future__ import annotations

import gc
import weakref
from typing import Any, List

from sentri.runtime import THAW_INTERVAL_S, FreezeSurvivors, tune_gc


def recorder(now: List[float]) -> Any:
    calls: List[str] = []
    survivors = FreezeSurvivors(clock=lambda: now[0], freeze=lambda: calls.append("freeze"),
                                unfreeze=lambda: calls.append("unfreeze"))
    return survivors, calls


def test_the_survivors_of_a_full_collection_are_frozen_and_young_collections_change_nothing() -> None:
    now = [100.0]
    survivors, calls = recorder(now)
    survivors("start", {"generation": 2})
    survivors("stop", {"generation": 0})
    survivors("stop", {"generation": 1})
    assert calls == []
    survivors("stop", {"generation": 2})
    assert calls == ["freeze"]


def test_every_interval_a_full_collection_thaws_so_the_next_one_walks_everything_frozen_garbage_included() -> None:
    now = [100.0]
    survivors, calls = recorder(now)
    survivors("stop", {"generation": 2})
    now[0] += THAW_INTERVAL_S
    survivors("stop", {"generation": 2})  # thaw: the next full collection walks every object
    now[0] += 1
    survivors("stop", {"generation": 2})  # that one ran: freezing resumes
    assert calls == ["freeze", "unfreeze", "freeze"]


def test_frozen_garbage_is_collected_by_the_full_collection_after_a_thaw() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    survivors = FreezeSurvivors(interval_s=3600.0)
    try:
        cycle = Cycle()
        alive = weakref.ref(cycle)
        survivors("stop", {"generation": 2})  # caught alive by a freeze
        del cycle
        gc.collect()
        assert alive() is not None  # garbage, but frozen: not collected
        survivors.interval_s = 0.0
        survivors("stop", {"generation": 2})  # the thaw
        gc.collect()
        assert alive() is None
    finally:
        gc.unfreeze()


def test_tuning_installs_the_callback_once() -> None:
    threshold = gc.get_threshold()
    try:
        tune_gc(threshold[0])
        tune_gc(threshold[0])
        assert sum(isinstance(callback, FreezeSurvivors) for callback in gc.callbacks) == 1
    finally:
        gc.callbacks[:] = [callback for callback in gc.callbacks if not isinstance(callback, FreezeSurvivors)]
        gc.unfreeze()
        gc.set_threshold(*threshold)
