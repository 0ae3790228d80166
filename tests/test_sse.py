"""The wire format (sentri/sse.py): exact bytes for the values JSON.stringify writes."""

from __future__ import annotations

import pytest

from sentri import sse


@pytest.mark.parametrize(
    "event, expected",
    [
        ({"type": "log", "message": "hi"}, b'data: {"type":"log","message":"hi"}\n\n'),
        # Non-ASCII text is written as UTF-8, not \u escapes (JSON.stringify does the same).
        ({"type": "log", "message": "\u00e9\u2713 \u65e5\u672c \U0001f600"},
         b'data: {"type":"log","message":"' + "\u00e9\u2713 \u65e5\u672c \U0001f600".encode("utf-8") + b'"}\n\n'),
        # A lone surrogate has no UTF-8 form; JSON.stringify (ES2019) writes it as an escape.
        ({"type": "llm_token", "token": "a\ud800b"}, b'data: {"type":"llm_token","token":"a\\ud800b"}\n\n'),
        ({"type": "llm_token", "token": "\udfff"}, b'data: {"type":"llm_token","token":"\\udfff"}\n\n'),
        # Non-finite numbers become null, at any depth.
        ({"type": "result", "result": {"score": float("nan"), "xs": [float("inf"), -float("inf"), 1.5]}},
         b'data: {"type":"result","result":{"score":null,"xs":[null,null,1.5]}}\n\n'),
        # Keys keep insertion order, nested too; no spaces after , and :.
        ({"type": "done", "z": 1, "a": {"y": [1, 2], "b": None}, "m": True},
         b'data: {"type":"done","z":1,"a":{"y":[1,2],"b":null},"m":true}\n\n'),
        # Control characters and quotes are escaped as JSON.stringify escapes them.
        ({"type": "log", "message": 'line1\nline2\r"q"\\\t\x00'},
         b'data: {"type":"log","message":"line1\\nline2\\r\\"q\\"\\\\\\t\\u0000"}\n\n'),
        # U+2028/U+2029 are valid raw in JSON.stringify's output and in an SSE data line.
        ({"type": "log", "message": "\u2028"}, b'data: {"type":"log","message":"\xe2\x80\xa8"}\n\n'),
        ({"type": "frame", "data": 10 ** 20}, b'data: {"type":"frame","data":100000000000000000000}\n\n'),
        # Floats in JavaScript's layout: integral ones without ".0", exponents only past 1e21 / below 1e-6.
        ({"type": "result", "ms": 1200.0, "r": [1e16, 1e21, 1e-05, 1e-07, 1.5e-07, -0.0, 0.25, -2.5e-8, True]},
         b'data: {"type":"result","ms":1200,"r":[10000000000000000,1e+21,0.00001,1e-7,1.5e-7,0,0.25,-2.5e-8,'
         b'true]}\n\n'),
        # A string that looks like a Python float is left alone, whichever encoder runs.
        ({"type": "log", "message": "v1.0} 3e+5", "n": 1.0}, b'data: {"type":"log","message":"v1.0} 3e+5","n":1}\n\n'),
    ],
)
def test_event_frame_is_the_exact_bytes_json_stringify_would_send(event, expected):
    assert sse.event_frame(event) == expected


def test_event_frame_with_an_id_puts_the_id_line_first():
    assert sse.event_frame({"type": "log"}, event_id="RUN-1:7") == b'id: RUN-1:7\ndata: {"type":"log"}\n\n'


@pytest.mark.parametrize("bad_id", ["a\rb", "a\nb", "a\r\nb", "a\x00b", ""])
def test_an_event_id_holding_cr_lf_or_nul_is_refused(bad_id):
    assert not sse.is_valid_event_id(bad_id)
    with pytest.raises(ValueError):
        sse.data_frame(b"{}", event_id=bad_id)


def test_heartbeat_retry_and_chunk_bytes():
    assert sse.HEARTBEAT == b": heartbeat\n\n"
    assert sse.retry_frame(2500) == b"retry: 2500\n\n"
    assert sse.chunk(b"data: {}\n\n") == b"a\r\ndata: {}\n\n\r\n"
    assert sse.CHUNKED_HEARTBEAT == b"d\r\n: heartbeat\n\n\r\n"
    assert sse.LAST_CHUNK == b"0\r\n\r\n"


@pytest.mark.parametrize(
    "number, text",
    [(1.0, "1"), (100.0, "100"), (0.1, "0.1"), (123.456, "123.456"), (1e21, "1e+21"), (1.2345678901234568e20,
     "123456789012345680000"), (1e-6, "0.000001"), (1e-7, "1e-7"), (5e-324, "5e-324"), (1.7976931348623157e308,
     "1.7976931348623157e+308"), (-0.0, "0"), (float("nan"), "null"), (float("-inf"), "null")],
)
def test_js_number_writes_floats_as_javascript_does(number, text):
    assert sse.js_number(number) == text


def test_dumps_js_matches_json_stringify_for_plain_values():
    assert sse.dumps_js([1, "x", None, False, 0.5]) == '[1,"x",null,false,0.5]'
    assert sse.dumps_js({}) == "{}"
    assert sse.dumps_js("\u00e9") == '"\u00e9"'


@pytest.mark.parametrize(
    "value, text",
    [(1.0, "1"), ({"a": 1.0}, '{"a":1}'), ([2.0], "[2]"), ({"a": 3.0, "b": 1}, '{"a":3,"b":1}'),
     ({"a": 1e-7}, '{"a":1e-7}'), ([float("nan")], "[null]"), ({"a": float("inf")}, '{"a":null}'),
     ({"message": "[2026-01-01T00:00:00.000Z] 1.0 e-mail"}, '{"message":"[2026-01-01T00:00:00.000Z] 1.0 e-mail"}')],
)
def test_dumps_js_writes_floats_as_json_stringify_wherever_they_stand(value, text):
    assert sse.dumps_js(value) == text


def test_the_log_message_of_a_frame_is_none_when_its_data_is_not_json_or_missing():
    assert sse.log_message_of(b'data: {"type":"log","message":"x"\n\n') is None  # cut short
    assert sse.log_message_of(b': {"type":"log"} in a comment only\n\n') is None  # no data line
    assert sse.log_message_of(b'data: {"type":"log","message":7}\n\n') is None
    assert sse.log_message_of(b'id: 1-0\ndata: {"type":"log","message":"kept"}\n\n') == "kept"
