"""Debian's Chromium, headless, driven by Playwright for Python (async API, on the test's loop).

Playwright's own browser download is never used: Chromium is the system package
(``apt-get install chromium``), launched with flags that need no network access and no
sandbox (CI containers run as root). Every page records what would hide a defect: console
errors (a CSP violation is one), uncaught page errors, and every request the page makes.
"""

from __future__ import annotations

import os
import re
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, List

from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = os.environ.get("SENTRI_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "artifacts", "browser")
TIMEOUT_MS = 15_000


class WatchedPage:
    """A page plus what it reported while the test ran."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console_errors: List[str] = []
        self.page_errors: List[str] = []
        self.requests: List[str] = []
        page.on("console", lambda message: self.console_errors.append(message.text)
                if message.type == "error" else None)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("request", lambda request: self.requests.append(request.url))

    def stream_requests(self) -> List[str]:
        return [url for url in self.requests if "/events" in url]

    async def wait_for_connection(self, state: str) -> None:
        await self.page.wait_for_selector(f"body[data-connection={state}]", state="attached", timeout=TIMEOUT_MS)

    async def log_lines(self) -> List[str]:
        lines: List[str] = await self.page.eval_on_selector_all("#log li", "items => items.map(i => i.textContent)")
        return lines

    async def wait_for_log_count(self, count: int) -> None:
        # A function, not an expression string: the page's CSP forbids eval, which Playwright
        # would use to poll an expression.
        await self.page.wait_for_function("count => document.querySelectorAll('#log li').length >= count",
                                          arg=count, timeout=TIMEOUT_MS)

    async def text(self, selector: str) -> str:
        return await self.page.text_content(selector) or ""

    async def screenshot(self, name: str) -> str:
        """Keep a screenshot as a test artifact (artifacts/browser/<name>.png)."""
        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(ARTIFACTS, re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".png")
        await self.page.screenshot(path=path, full_page=True)
        return path


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # Playwright gives every launch a fresh temporary user-data-dir of its own (and refuses
        # a --user-data-dir flag), so no profile state leaks from one test to the next.
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, timeout=TIMEOUT_MS)
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def open_page(browser: Browser, url: str, **context_options: Any) -> AsyncIterator[WatchedPage]:
    context = await browser.new_context(viewport={"width": 1280, "height": 860}, **context_options)
    try:
        page = WatchedPage(await context.new_page())
        page.page.set_default_timeout(TIMEOUT_MS)
        await page.page.goto(url)
        yield page
    finally:
        await context.close()
