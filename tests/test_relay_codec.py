"""The relay's pure parts: the message format (docs/relay.md §2, §4) and the reconnect backoff."""

from __future__ import annotations

import pytest

from sentri.bus.backoff import Backoff
from sentri.bus.messages import Relayed, decode_relayed, encode_event, origin_json, run_id_of, with_origin

OURS = "py_1_abc"


def test_the_origin_is_spliced_in_as_the_last_key_without_re_encoding_the_event():
    event = encode_event("log", {"message": "é ✓", "_origin": "forged"})
    assert event == '{"type":"log","message":"é ✓"}'.encode()
    assert with_origin(event, origin_json(OURS)) == '{"type":"log","message":"é ✓","_origin":"py_1_abc"}'.encode()


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # Node's JSON.stringify output: the tail is cut, the rest passes byte for byte.
        (b'{"type":"log","n":1e-7,"f":1.0e+21,"_origin":"inst_1_x"}',
         Relayed("log", b'{"type":"log","n":1e-7,"f":1.0e+21}')),
        (b'{"type":"done","status":"completed","_origin":"w"}',
         Relayed("done", b'{"type":"done","status":"completed"}')),
        # No origin, or not last: re-encoded compactly, key order kept.
        (b'{"type": "log", "message": "a"}', Relayed("log", b'{"type":"log","message":"a"}')),
        (b'{"_origin":"w","type":"log","x":[1, 2]}', Relayed("log", b'{"type":"log","x":[1,2]}')),
        # A raw line break never passes through (it would end the data: line).
        (b'{"type":"log",\n"message":"a","_origin":"w"}', Relayed("log", b'{"type":"log","message":"a"}')),
        # JSON.stringify writes UTF-8, not \u escapes; Node re-stringifies, so do we.
        (b'{"type":"log","message":"\\u00e9\\n","_origin":"w"}',
         Relayed("log", '{"type":"log","message":"é\\n"}'.encode())),
    ],
)
def test_messages_from_other_processes_are_delivered_without_their_origin(message, expected):
    assert decode_relayed(message, OURS) == expected


@pytest.mark.parametrize(
    "message",
    [b"", b"not json", b"\xff", b"[1]", b"null", b'"s"', b"{}", b'{"type":null}', b'{"type":["log"]}',
     b'{"type":"log","_origin":"py_1_abc"}'],
)
def test_own_echoes_and_malformed_messages_are_ignored(message):
    assert decode_relayed(message, OURS) is None


def test_own_events_with_an_id_come_back_and_those_delivered_here_in_an_outage_say_so():
    assert decode_relayed(b'{"type":"log","message":"a","_origin":"py_1_abc|1700000000000-7"}', OURS) == \
        Relayed("log", b'{"type":"log","message":"a"}', "1700000000000-7", own=True)
    assert decode_relayed(b'{"type":"log","message":"a","_origin":"py_1_abc|1700000000000-8|local"}', OURS) == \
        Relayed("log", b'{"type":"log","message":"a"}', "1700000000000-8", own=True, delivered_here=True)
    # Another process's outage event is everyone's event here.
    assert decode_relayed(b'{"type":"log","message":"a","_origin":"py_2_def|1700000000000-9|local"}', OURS) == \
        Relayed("log", b'{"type":"log","message":"a"}', "1700000000000-9")


def test_only_run_channels_name_a_run():
    assert run_id_of("sentri:run:RUN-7") == "RUN-7"
    assert run_id_of("sentri:run:") is None
    assert run_id_of("sentri:token:revoked") is None


def test_backoff_grows_exponentially_up_to_the_cap():
    backoff = Backoff(0.1, 2.0, uniform=lambda low, high: high)
    assert [backoff.compute(attempt) for attempt in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert backoff.compute(10_000) == 2.0


def test_backoff_jitter_keeps_at_least_half_of_each_step():
    backoff = Backoff(0.1, 2.0, uniform=lambda low, high: low)
    assert [backoff.compute(attempt) for attempt in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    real = Backoff(0.1, 2.0)
    assert all(0.5 <= real.compute(9) <= 2.0 for _ in range(200))
    assert len({real.compute(9) for _ in range(20)}) > 1  # instances do not retry in lockstep


def test_backoff_rejects_a_cap_below_its_base():
    with pytest.raises(ValueError):
        Backoff(1.0, 0.5)
