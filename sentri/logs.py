"""Logging setup: plain or JSON lines, level from LOG_LEVEL, and an access log without secrets.

Tornado's own access line holds the full URI, ``?token=`` included (docs/settings.md §4), so the
application logs the path without the query string instead.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Dict

import tornado.web
from tornado import httputil

from .redact import install_redaction

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
          "error": logging.ERROR}

access_log = logging.getLogger("sentri.access")


# The Node backend's JSON line starts with these, in this order (docs/settings.md §4); a record's own
# fields come after them and never replace them.
NODE_FIELDS = ("ts", "level", "runId", "msg")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: Node's ``ts``, ``level``, ``runId`` (when known), ``msg``, then ours."""

    def format(self, record: logging.LogRecord) -> str:
        fields: Dict[str, Any] = getattr(record, "fields", None) or {}
        entry: Dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower().replace("warning", "warn"),
        }
        if fields.get("runId") is not None:  # Node leaves runId out when there is none
            entry["runId"] = fields["runId"]
        entry["msg"] = record.getMessage()
        entry["logger"] = record.name
        for key, value in fields.items():
            if key not in NODE_FIELDS:
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return line

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        # Exception text can quote request data (tokens in URLs); name the type only.
        return f"  {ei[0].__name__}" if ei and ei[0] else ""


def level_of(name: str) -> int:
    return LEVELS.get(name.strip().lower(), logging.INFO)


def configure_logging(level: str, as_json: bool, stream: Any = None) -> None:
    install_redaction()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else PlainFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level_of(level))


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's ``log_function``: one access line, path only (never the query string)."""
    log_access(handler.request, handler.get_status())


def log_access(request: httputil.HTTPServerRequest, status: int) -> None:
    """The access line of a request answered ``status``, by a handler or by a route's own delegate
    (handlers/publish_fast.py), so both write the same line."""
    level = logging.INFO if status < 500 else logging.ERROR
    if not access_log.isEnabledFor(level):  # LOG_LEVEL=warn: most requests need no line at all
        return
    fields = {
        "method": request.method,
        "path": request.path,
        "status": status,
        "ms": round(request.request_time() * 1000, 2),
        "ip": request.remote_ip,
    }
    access_log.log(level, "%s %s %d", request.method, request.path, status, extra={"fields": fields})
