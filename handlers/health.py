"""Liveness ``GET /healthz`` and readiness ``GET /readyz``: unauthenticated, cheap, outside ``/api/v1``.

Liveness only proves the IOLoop answers. Readiness is what a load balancer should route on:
the database answers a ``SELECT 1`` within ``SENTRI_READY_TIMEOUT_S``, the Redis relay is
connected when ``REDIS_URL`` is set, and the instance is not draining. A failure is a 503
whose body names the checks that failed, and never their error text (it could quote a URL
with a password).
"""

from __future__ import annotations

import asyncio
import logging
from typing import List

from .base import JsonHandler

log = logging.getLogger("sentri.health")

DRAINING = "draining"
DATABASE = "database"
RELAY = "relay"


class LivenessHandler(JsonHandler):
    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.write_json({"status": "ok"})


class ReadinessHandler(JsonHandler):
    async def failed_checks(self) -> List[str]:
        context = self.context
        failed: List[str] = []
        if context.draining:
            failed.append(DRAINING)
        try:
            await asyncio.wait_for(context.store.ping(), context.settings.ready_timeout_s)
        except Exception as error:  # any failure, timeout included, means "not ready"
            log.warning("readiness: database check failed (%s)", type(error).__name__)
            failed.append(DATABASE)
        if context.settings.redis_url and not context.bus.connected:
            failed.append(RELAY)
        return failed

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        failed = await self.failed_checks()
        if failed:
            self.write_json({"error": "not ready", "failed": failed}, status=503)
        else:
            self.write_json({"status": "ready"})


default_handlers = [
    (r"/healthz", LivenessHandler),
    (r"/readyz", ReadinessHandler),
]
