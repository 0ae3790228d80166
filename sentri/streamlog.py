"""One log line when a stream goes live and one when it ends (a ``HubObserver``).

Fields use camelCase like the Node backend's JSON logs; the client address is the one nginx
forwarded (Tornado's ``xheaders``). Nothing from the request that could carry a secret (the
query string, cookies, headers) is ever put in these lines.
"""

from __future__ import annotations

import logging
import time

from .hub import HubObserver
from .stream import EventStream

log = logging.getLogger("sentri.streams")


class StreamLogObserver(HubObserver):
    def stream_opened(self, stream: EventStream) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info("stream opened", extra={"fields": {
                "runId": stream.run_id,
                "workspaceId": stream.workspace_id,
                "ip": stream.client_ip,
            }})

    def stream_closed(self, stream: EventStream) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info("stream closed", extra={"fields": {
                "runId": stream.run_id,
                "workspaceId": stream.workspace_id,
                "ip": stream.client_ip,
                "durationMs": round((time.monotonic() - stream.opened_at) * 1000),
                "reason": stream.close_reason,
            }})
