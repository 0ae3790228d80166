"""The live run page: one static HTML file (package data) and the headers it is served with.

The page has no external assets: its CSS and JavaScript are inline, and the
Content-Security-Policy allows exactly those inline blocks by their SHA-256 hashes (the file
never changes while the process runs, so hashes beat a per-request nonce: no templating,
the same bytes for every request). Everything else is refused except what the page needs:
its own origin for the stream (``connect-src``) and ``data:`` images for screencast frames.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import List, Tuple

PAGE_RESOURCE = "run.html"
_INLINE_BLOCK = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@dataclass(frozen=True)
class StaticPage:
    body: bytes
    content_security_policy: str

    def headers(self) -> List[Tuple[str, str]]:
        return [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Security-Policy", self.content_security_policy),
            # The page may be opened with ?token=: never let the address leave in a Referer.
            ("Referrer-Policy", "no-referrer"),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Cache-Control", "no-cache"),
        ]


def source_hash(text: str) -> str:
    """A CSP hash source for an inline block's exact text."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_security_policy(html: str) -> str:
    scripts = [source_hash(text) for kind, text in _INLINE_BLOCK.findall(html) if kind == "script"]
    styles = [source_hash(text) for kind, text in _INLINE_BLOCK.findall(html) if kind == "style"]
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(scripts or ["'none'"]),
            "style-src " + " ".join(styles or ["'none'"]),
            "img-src 'self' data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def load_page(html: str) -> StaticPage:
    return StaticPage(body=html.encode("utf-8"), content_security_policy=content_security_policy(html))


@functools.cache
def run_page() -> StaticPage:
    """The run page, read from the package once."""
    html = resources.files("sentri").joinpath("static").joinpath(PAGE_RESOURCE).read_text(encoding="utf-8")
    return load_page(html)
