"""Logging edges: the redacting record factory is installed once and lets a broken format
string through to logging's own report; configure_logging replaces the root's handlers; the
stream log observer stays silent when INFO is off."""

from __future__ import annotations

import io
import json
import logging

from sentri import redact
from sentri.hub import Hub
from sentri.logs import configure_logging
from sentri.stream import EventStream
from sentri.streamlog import StreamLogObserver

from .logcheck import root_logging_restored


def test_installing_redaction_again_keeps_the_one_factory():
    redact.install_redaction()
    factory = logging.getLogRecordFactory()
    redact.install_redaction()
    assert logging.getLogRecordFactory() is factory
    record = factory("x", logging.INFO, __file__, 1, "token=%s", ("abc",), None)
    assert record.getMessage() == "token=" + redact.REDACTED


def test_a_record_whose_format_string_is_broken_is_left_for_logging_to_report():
    redact.install_redaction()
    record = logging.getLogRecordFactory()("x", logging.INFO, __file__, 1, "%d tokens", ("many",), None)
    assert (record.msg, record.args) == ("%d tokens", ("many",))  # untouched: not redacted, not dropped


def test_configure_logging_replaces_every_root_handler_with_one_writing_json():
    stale = logging.StreamHandler(io.StringIO())
    out = io.StringIO()
    with root_logging_restored() as root:
        root.addHandler(stale)
        configure_logging("warn", True, stream=out)
        assert len(root.handlers) == 1 and root.handlers[0] is not stale
        assert root.level == logging.WARNING
        logging.getLogger("sentri.test").warning("cookie access_token=secret-value")
    line = json.loads(out.getvalue())
    assert (line["level"], line["msg"]) == ("warn", "cookie access_token=" + redact.REDACTED)
    assert stale.stream.getvalue() == ""  # type: ignore[attr-defined]


def test_the_stream_log_observer_writes_nothing_when_info_is_off(caplog):
    caplog.set_level(logging.WARNING, logger="sentri.streams")
    stream = EventStream(Hub(1.0, 10, 1 << 20), "RUN-1", client_ip="10.0.0.1")
    stream.close_reason = "done"
    observer = StreamLogObserver()
    observer.stream_opened(stream)
    observer.stream_closed(stream)
    caplog.set_level(logging.INFO, logger="sentri.streams")
    observer.stream_closed(stream)
    assert [record.getMessage() for record in caplog.records if record.name == "sentri.streams"] == ["stream closed"]
