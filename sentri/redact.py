"""Secrets never reach a log line: every record is scrubbed when it is created.

Tokens travel in ``?token=`` (EventSource cannot send headers), in ``Authorization:
Bearer`` and in the ``access_token`` cookie; artifact URLs carry ``?token=<mac>``. Tornado's
own loggers (``tornado.application`` quotes the request URI on an uncaught error,
``tornado.general`` quotes bad request lines) are not ours to change, so the scrubbing is a
log-record factory: it applies to every logger and every handler, including ones a library
adds. Exception text is never formatted at all (see ``logs``): only the exception's type.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Optional

REDACTED = "[redacted]"

_PATTERNS = (
    # query or form parameters and cookies whose value is a credential or a signature
    re.compile(r"(?i)(\b(?:access_token|token|jwt|signature|sig)=)[^&\s;\"',]+"),
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+"),
    # a JWT wherever it appears: base64url JSON header ("eyJ") and two more parts
    re.compile(r"()eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"),
)


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda match: match.group(1) + REDACTED, text)
    return text


_installed: Optional[Callable[..., logging.LogRecord]] = None


def install_redaction() -> None:
    """Make every log record of this process scrub its message (idempotent)."""
    global _installed
    if _installed is not None:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it later as it always does
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return record

    logging.setLogRecordFactory(factory)
    _installed = factory
