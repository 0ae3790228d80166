"""The in-process history: ids, bounds, lifetimes, and what a resume finds in it."""

from __future__ import annotations

import pytest

from sentri.history import Entry, MemoryHistory, Replay, id_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def history(clock: Clock, **bounds: float) -> MemoryHistory:
    values = {"max_events": 100, "max_bytes": 10_000, "max_runs": 10, "done_ttl_s": 60.0, "idle_ttl_s": 3600.0}
    values.update(bounds)
    return MemoryHistory(clock=clock, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "abc", "1", "1-", "-1", "1-2-3", "1-2\n", "١-٢", "1-2 ", "9" * 21 + "-1"])
def test_anything_but_two_decimal_numbers_is_not_an_event_id(text):
    assert id_key(text) is None


def test_ids_increase_within_a_run_and_never_repeat_across_runs():
    log = history(Clock())
    ids = [log.append_now(run, b"{}", False) for run in ("RUN-1", "RUN-2", "RUN-1", "RUN-2")]
    assert len(set(ids)) == 4
    keys = [id_key(event_id) for event_id in ids]
    assert keys == sorted(keys)
    assert all(key is not None and key[0] == log.epoch_ms for key in keys)


@pytest.mark.gen_test
async def test_replay_after_an_id_returns_the_later_events_in_order():
    log = history(Clock())
    first = log.append_now("RUN-1", b'{"n":1}', False)
    second = log.append_now("RUN-1", b'{"n":2}', False)
    third = log.append_now("RUN-1", b'{"n":3}', False)
    replay = await log.replay_after("RUN-1", first)
    assert [(entry.event_id, entry.data) for entry in replay.entries] == [(second, b'{"n":2}'), (third, b'{"n":3}')]
    assert not replay.client_has_done
    assert (await log.replay_after("RUN-1", third)).entries == []
    assert await log.last_id("RUN-1") == third


@pytest.mark.gen_test
async def test_another_runs_id_an_unknown_id_and_a_forged_id_are_not_found():
    log = history(Clock())
    other = log.append_now("RUN-2", b"{}", False)
    log.append_now("RUN-1", b"{}", False)
    assert await log.replay_after("RUN-1", other) is None
    assert await log.replay_after("RUN-1", f"{log.epoch_ms}-999") is None
    assert await log.replay_after("RUN-1", "not-an-id") is None
    assert await log.replay_after("RUN-9", other) is None


@pytest.mark.gen_test
async def test_the_oldest_events_fall_out_past_the_event_and_byte_bounds():
    log = history(Clock(), max_events=3, max_bytes=10_000)
    ids = [log.append_now("RUN-1", b"{}", False) for _ in range(5)]
    assert await log.replay_after("RUN-1", ids[1]) is None
    assert [entry.event_id for entry in (await log.replay_after("RUN-1", ids[2])).entries] == ids[3:]
    sized = history(Clock(), max_bytes=10)
    a = sized.append_now("RUN-1", b"12345", False)
    b = sized.append_now("RUN-1", b"12345", False)
    sized.append_now("RUN-1", b"12345", False)
    assert await sized.replay_after("RUN-1", a) is None
    assert len((await sized.replay_after("RUN-1", b)).entries) == 1


@pytest.mark.gen_test
async def test_a_run_is_forgotten_after_its_done_ttl_and_the_least_recent_run_past_max_runs():
    clock = Clock()
    log = history(clock, done_ttl_s=60, max_runs=2)
    done = log.append_now("RUN-1", b'{"type":"done"}', True)
    assert await log.done_id("RUN-1") == done
    assert (await log.replay_after("RUN-1", done)).client_has_done
    clock.now += 61
    assert await log.replay_after("RUN-1", done) is None
    kept = [log.append_now(run, b"{}", False) for run in ("RUN-2", "RUN-3", "RUN-4")]
    assert await log.replay_after("RUN-2", kept[0]) is None
    assert await log.replay_after("RUN-4", kept[2]) is not None


@pytest.mark.gen_test
async def test_a_run_without_done_is_forgotten_after_the_idle_ttl():
    clock = Clock()
    log = history(clock, idle_ttl_s=100)
    event_id = log.append_now("RUN-1", b"{}", False)
    clock.now += 99
    assert await log.replay_after("RUN-1", event_id) is not None
    clock.now += 2
    assert await log.last_id("RUN-1") is None


def test_a_replay_ends_at_the_runs_done_even_when_history_holds_events_after_it():
    # Found by the soak (bench/soak.py): after a Redis outage an instance's outbox can land
    # events in history behind the run's done; a resume sent them after the done.
    before = Entry("1-1", b'{"type":"log","message":"a"}')
    done = Entry("1-2", b'{"type":"done","status":"completed"}', ends_stream=True)
    late = Entry("1-3", b'{"type":"llm_token","token":"late"}')
    replay = Replay([before, done, late])
    assert replay.entries == [before, done]
    assert replay.last_id == "1-2"
    assert Replay([before, late]).entries == [before, late]
