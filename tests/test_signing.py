"""Signed artifact URLs (docs/auth.md §6), checked with the documented algorithm written out independently."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Tuple
from urllib.parse import parse_qs, urlsplit

from sentri.signing import ArtifactSigner, artifact_mac, sign_path, verify_signed_path

SECRET = "artifact-secret"
NOW_MS = 1_767_225_600_000
TTL_MS = 3_600_000


def spec_mac(secret: str, path: str, expires_ms: int) -> str:
    """docs/auth.md §6, independently of sentri.signing: unpadded base64url HMAC-SHA256 of 'p:exp'."""
    digest = hmac.new(secret.encode(), f"{path}:{expires_ms}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def split_signed(url: str) -> Tuple[str, str, int]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert list(query) == ["token", "exp"], url
    return parts.path, query["token"][0], int(query["exp"][0])


def assert_signed(url: str, path: str, secret: str = SECRET, now_ms: int = NOW_MS) -> None:
    signed_path, mac, expires_ms = split_signed(url)
    assert signed_path == path
    assert expires_ms == now_ms + TTL_MS
    assert mac == spec_mac(secret, path, expires_ms)
    assert "=" not in mac and "+" not in mac and "/" not in mac
    assert verify_signed_path(secret, path, mac, expires_ms, now_ms)


def test_sign_path_appends_token_and_exp_in_that_order():
    mac = spec_mac(SECRET, "/artifacts/a.png", 5000)
    assert sign_path(SECRET, "/artifacts/a.png", 5000) == f"/artifacts/a.png?token={mac}&exp=5000"
    assert artifact_mac(SECRET, "/artifacts/a.png", 5000) == mac


def test_null_and_empty_paths_stay_as_they_are():
    assert sign_path(SECRET, None, 5000) is None
    assert sign_path(SECRET, "", 5000) == ""


def test_verify_refuses_an_expired_url_a_wrong_secret_and_another_path():
    expires = NOW_MS + 10
    mac = artifact_mac(SECRET, "/a.png", expires)
    assert verify_signed_path(SECRET, "/a.png", mac, expires, NOW_MS)
    assert not verify_signed_path(SECRET, "/a.png", mac, expires, expires)
    assert not verify_signed_path("other", "/a.png", mac, expires, NOW_MS)
    assert not verify_signed_path(SECRET, "/b.png", mac, expires, NOW_MS)


def test_every_artifact_path_of_a_run_is_signed_and_the_input_is_not_changed():
    result = {
        "testId": "TC-1",
        "screenshotPath": "/artifacts/r/shot.png",
        "videoPath": "/artifacts/r/video.webm",
        "visualDiff": {"baselinePath": "/artifacts/r/base.png", "diffPath": "/artifacts/r/diff.png", "score": 0.1},
        "stepCaptures": [
            {"step": 1, "screenshotPath": "/artifacts/r/s1.png",
             "visualDiff": {"baselinePath": "/artifacts/r/s1-base.png", "diffPath": "/artifacts/r/s1-diff.png"}},
            {"step": 2, "screenshotPath": None},
        ],
    }
    run = {
        "id": "RUN-1",
        "tracePath": "/artifacts/trace.zip",
        "videoPath": None,
        "videoSegments": ["/artifacts/seg1.webm", "/artifacts/seg2.webm"],
        "results": [result, "not-an-object"],
    }
    original_result = repr(result)
    signed = ArtifactSigner(SECRET, TTL_MS).sign_run(run, now_ms=NOW_MS)
    assert_signed(signed["tracePath"], "/artifacts/trace.zip")
    assert signed["videoPath"] is None
    assert_signed(signed["videoSegments"][0], "/artifacts/seg1.webm")
    assert_signed(signed["videoSegments"][1], "/artifacts/seg2.webm")
    first = signed["results"][0]
    assert_signed(first["screenshotPath"], "/artifacts/r/shot.png")
    assert_signed(first["videoPath"], "/artifacts/r/video.webm")
    assert_signed(first["visualDiff"]["baselinePath"], "/artifacts/r/base.png")
    assert_signed(first["visualDiff"]["diffPath"], "/artifacts/r/diff.png")
    assert first["visualDiff"]["score"] == 0.1
    capture = first["stepCaptures"][0]
    assert_signed(capture["screenshotPath"], "/artifacts/r/s1.png")
    assert_signed(capture["visualDiff"]["baselinePath"], "/artifacts/r/s1-base.png")
    assert_signed(capture["visualDiff"]["diffPath"], "/artifacts/r/s1-diff.png")
    assert first["stepCaptures"][1] == {"step": 2, "screenshotPath": None}
    assert signed["results"][1] == "not-an-object"
    assert repr(result) == original_result  # the result objects themselves are copied, not edited


def test_a_run_with_no_artifact_paths_and_non_list_segments_and_results_is_left_as_it_is():
    run = {"id": "RUN-1", "videoSegments": None, "results": "[]"}
    assert ArtifactSigner(SECRET, TTL_MS).sign_run(run, now_ms=NOW_MS) == {
        "id": "RUN-1", "videoSegments": None, "results": "[]"}


def test_a_step_capture_that_is_not_an_object_is_kept_unsigned():
    result = {"testId": "TC-1", "stepCaptures": ["not-an-object", None, {"screenshotPath": "/artifacts/s.png"}]}
    signed = ArtifactSigner(SECRET, TTL_MS).sign_result(result, now_ms=NOW_MS)
    assert signed["stepCaptures"][:2] == ["not-an-object", None]
    assert_signed(signed["stepCaptures"][2]["screenshotPath"], "/artifacts/s.png")
