"""Token verification refuses claims of the wrong shape and revoked ids, not only bad signatures."""

from __future__ import annotations

import time

import jwt

from sentri.tokens import verify

SECRET = "token-secret-0123456789-0123456789"


def signed(**claims):  # type: ignore[no-untyped-def]
    return jwt.encode({"exp": int(time.time()) + 60, **claims}, SECRET, algorithm="HS256")


def test_a_subject_that_is_neither_a_string_nor_a_number_is_refused():
    assert verify(signed(sub=["USR-1"]), SECRET) is None
    assert verify(signed(sub=True), SECRET) is None  # a bool is an int to Python, not an id
    assert verify(signed(sub=7), SECRET).user_id == "7"  # type: ignore[union-attr]


def test_a_token_id_that_is_not_a_string_is_refused():
    assert verify(signed(sub="USR-1", jti=12345), SECRET) is None
    assert verify(signed(sub="USR-1", jti="J-1"), SECRET).jti == "J-1"  # type: ignore[union-attr]


def test_a_revoked_token_id_is_refused_and_only_that_one():
    revoked = {"J-revoked"}
    assert verify(signed(sub="USR-1", jti="J-revoked"), SECRET, revoked.__contains__) is None
    identity = verify(signed(sub="USR-1", jti="J-other", workspaceId="WS-1"), SECRET, revoked.__contains__)
    assert identity is not None
    assert (identity.user_id, identity.jti, identity.workspace_id) == ("USR-1", "J-other", "WS-1")
