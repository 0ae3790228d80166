"""``GET /runs/{runId}``: the page that watches one run live in a browser.

The page is a static shell: it holds no run data and checks no token. Its script opens
the run's stream, which authenticates and authorises as every stream does, so a caller
who may not see the run gets the shell and an error, never the run.
"""

from __future__ import annotations

from sentri.run_page import run_page

from .base import ApiError, JsonHandler
from .events_connect import RUN_ID_PATTERN, RUN_NOT_FOUND


class RunPageHandler(JsonHandler):
    def get(self, run_id: str) -> None:
        if not RUN_ID_PATTERN.fullmatch(run_id):
            raise ApiError(404, RUN_NOT_FOUND)
        page = run_page()
        for name, value in page.headers():
            self.set_header(name, value)
        self.finish(page.body)


default_handlers = [
    (r"/runs/([^/]+)/?", RunPageHandler),
]
