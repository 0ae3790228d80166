"""Signed artifact URLs (docs/auth.md §6): ``p?token=<mac>&exp=<epoch ms>``.

``mac`` is the unpadded base64url HMAC-SHA256 of ``p + ":" + exp`` under ``ARTIFACT_SECRET``.
The stored row is never changed: signing works on the decoded copy sent to the client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any, Dict, Tuple

RUN_PATH_KEYS = ("tracePath", "videoPath")
RESULT_PATH_KEYS = ("screenshotPath", "videoPath")
CAPTURE_PATH_KEYS = ("screenshotPath",)
VISUAL_DIFF_KEYS = ("baselinePath", "diffPath")


def artifact_mac(secret: str, path: str, expires_ms: int) -> str:
    digest = hmac.new(secret.encode("utf-8"), f"{path}:{expires_ms}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign_path(secret: str, path: Any, expires_ms: int) -> Any:
    if not isinstance(path, str) or not path:
        return path
    return f"{path}?token={artifact_mac(secret, path, expires_ms)}&exp={expires_ms}"


def verify_signed_path(secret: str, path: str, mac: str, expires_ms: int, now_ms: int) -> bool:
    return expires_ms > now_ms and hmac.compare_digest(artifact_mac(secret, path, expires_ms), mac)


class ArtifactSigner:
    def __init__(self, secret: str, lifetime_ms: int) -> None:
        self._secret = secret
        self._lifetime_ms = lifetime_ms

    def sign_run(self, run: Dict[str, Any], now_ms: int) -> Dict[str, Any]:
        """Sign every artifact path of a decoded run in place (the copy, not the row)."""
        expires_ms = now_ms + self._lifetime_ms
        for key in RUN_PATH_KEYS:
            if key in run:
                run[key] = sign_path(self._secret, run[key], expires_ms)
        if isinstance(run.get("videoSegments"), list):
            run["videoSegments"] = [sign_path(self._secret, p, expires_ms) for p in run["videoSegments"]]
        if isinstance(run.get("results"), list):
            run["results"] = [self.sign_result(result, now_ms) for result in run["results"]]
        return run

    def sign_result(self, result: Any, now_ms: int) -> Any:
        if not isinstance(result, dict):
            return result
        expires_ms = now_ms + self._lifetime_ms
        signed = dict(result)
        self._sign_keys(signed, RESULT_PATH_KEYS, expires_ms)
        self._sign_visual_diff(signed, expires_ms)
        captures = signed.get("stepCaptures")
        if isinstance(captures, list):
            signed["stepCaptures"] = [self._sign_capture(capture, expires_ms) for capture in captures]
        return signed

    def _sign_capture(self, capture: Any, expires_ms: int) -> Any:
        if not isinstance(capture, dict):
            return capture
        signed = dict(capture)
        self._sign_keys(signed, CAPTURE_PATH_KEYS, expires_ms)
        self._sign_visual_diff(signed, expires_ms)
        return signed

    def _sign_visual_diff(self, holder: Dict[str, Any], expires_ms: int) -> None:
        diff = holder.get("visualDiff")
        if isinstance(diff, dict):
            diff = dict(diff)
            self._sign_keys(diff, VISUAL_DIFF_KEYS, expires_ms)
            holder["visualDiff"] = diff

    def _sign_keys(self, holder: Dict[str, Any], keys: Tuple[str, ...], expires_ms: int) -> None:
        for key in keys:
            if key in holder:
                holder[key] = sign_path(self._secret, holder[key], expires_ms)

