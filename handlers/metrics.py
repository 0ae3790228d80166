"""``GET /metrics``: Prometheus text, behind ``Authorization: Bearer <SENTRI_METRICS_TOKEN>``.

A bearer token (not a separate port) because instances already sit behind nginx on one port
each and Prometheus sends bearer tokens natively; nginx's site config also refuses
``/metrics`` from outside, so the token is a second lock. Unset token: the endpoint does not
exist (404), so metrics are never open by accident.
"""

from __future__ import annotations

import hmac

from sentri.metrics import CONTENT_TYPE

from .base import ApiError, JsonHandler

AUTH_REQUIRED = {"error": "Authentication required."}
NOT_FOUND = {"error": "not found"}


class MetricsHandler(JsonHandler):
    def get(self) -> None:
        expected = self.context.settings.metrics_token
        metrics = self.context.metrics
        if not expected or metrics is None:
            raise ApiError(404, NOT_FOUND)
        header = self.request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode("utf-8"), expected.encode("utf-8")
        ):
            # Answered here, not raised: send_error would clear this header.
            self.set_header("WWW-Authenticate", 'Bearer realm="metrics"')
            self.write_json(AUTH_REQUIRED, status=401)
            return
        self.set_header("Content-Type", CONTENT_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.finish(metrics.exposition())


default_handlers = [
    (r"/metrics", MetricsHandler),
]
