"""Authentication and workspace resolution (docs/auth.md §3, §5): token sources, bad tokens, membership."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import warnings

import jwt
import pytest

from .conftest import JWT_SECRET, token_for
from .sseclient import open_request

AUTH_REQUIRED = b'{"error":"Authentication required."}'
NO_WORKSPACE = b'{"error":"You are not a member of any workspace. Please contact your administrator."}'
EVENTS = "/api/v1/runs/RUN-1/events"


async def status_and_body(port, path, headers=None):
    response = await open_request(port, path, headers=headers)
    if response.status == 200:
        await response.next_event()  # the snapshot
        return 200, b""
    await response.read_json()
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    return response.status, response.body


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def claims_for(user, workspace_id="WS-1", **overrides):
    now = int(time.time())
    claims = {"sub": user["id"], "email": user["email"], "name": user["name"], "role": "admin",
              "jti": "jti-1", "workspaceId": workspace_id, "iat": now, "exp": now + 3600}
    claims.update(overrides)
    return claims


@pytest.mark.gen_test
async def test_a_token_in_the_cookie_the_bearer_header_or_the_query_each_opens_the_stream(port, world):
    assert await status_and_body(port, EVENTS, {"Cookie": f"access_token={world.token}"}) == (200, b"")
    assert await status_and_body(port, EVENTS, {"Authorization": f"Bearer {world.token}"}) == (200, b"")
    assert await status_and_body(port, f"{EVENTS}?token={world.token}") == (200, b"")


@pytest.mark.gen_test
async def test_the_cookie_is_tried_before_the_bearer_header_and_the_bearer_before_the_query(port, world, rows):
    outsider = rows.user(id="USR-out")  # valid token, but a member of no workspace: answers 403
    outsider_token = token_for(outsider)
    cookie_member = {"Cookie": f"access_token={world.token}", "Authorization": f"Bearer {outsider_token}"}
    assert await status_and_body(port, f"{EVENTS}?token={outsider_token}", cookie_member) == (200, b"")
    cookie_outsider = {"Cookie": f"access_token={outsider_token}", "Authorization": f"Bearer {world.token}"}
    assert await status_and_body(port, f"{EVENTS}?token={world.token}", cookie_outsider) == (403, NO_WORKSPACE)
    bearer_member = {"Authorization": f"Bearer {world.token}"}
    assert await status_and_body(port, f"{EVENTS}?token={outsider_token}", bearer_member) == (200, b"")
    bearer_outsider = {"Authorization": f"Bearer {outsider_token}"}
    assert await status_and_body(port, f"{EVENTS}?token={world.token}", bearer_outsider) == (403, NO_WORKSPACE)


@pytest.mark.gen_test
async def test_a_request_without_any_token_gets_401(port, world):
    assert await status_and_body(port, EVENTS) == (401, AUTH_REQUIRED)
    assert await status_and_body(port, EVENTS, {"Authorization": "Bearer "}) == (401, AUTH_REQUIRED)
    assert await status_and_body(port, EVENTS, {"Authorization": f"Basic {world.token}"}) == (401, AUTH_REQUIRED)
    assert await status_and_body(port, f"{EVENTS}?token=") == (401, AUTH_REQUIRED)


@pytest.mark.gen_test
@pytest.mark.parametrize("token", ["abc", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.%FF%FE.x", "Bearer"])
async def test_a_malformed_token_gets_401(port, world, token):
    assert await status_and_body(port, f"{EVENTS}?token={token}") == (401, AUTH_REQUIRED)


@pytest.mark.gen_test
async def test_a_token_signed_with_another_secret_gets_401(port, world):
    forged = token_for(world.user, "WS-1", secret="not-the-secret-0123456789abcdefgh")
    assert await status_and_body(port, f"{EVENTS}?token={forged}") == (401, AUTH_REQUIRED)
    header, payload, signature = world.token.split(".")
    tampered_payload = b64url(json.dumps(claims_for(world.user, sub="USR-2")).encode())
    assert await status_and_body(port, f"{EVENTS}?token={header}.{tampered_payload}.{signature}") == (
        401, AUTH_REQUIRED)


@pytest.mark.gen_test
async def test_a_token_whose_alg_is_not_hs256_gets_401_even_with_the_right_secret(port, world):
    with warnings.catch_warnings():  # PyJWT warns that the key is short for SHA-512; that is not the point
        warnings.simplefilter("ignore")
        hs512 = jwt.encode(claims_for(world.user), JWT_SECRET, algorithm="HS512")
    assert await status_and_body(port, f"{EVENTS}?token={hs512}") == (401, AUTH_REQUIRED)
    unsigned = b64url(b'{"alg":"none","typ":"JWT"}') + "." + b64url(json.dumps(claims_for(world.user)).encode()) + "."
    assert await status_and_body(port, f"{EVENTS}?token={unsigned}") == (401, AUTH_REQUIRED)
    # alg "none" with the HS256 signature of the same bytes attached: still refused.
    signing_input = unsigned[:-1]
    mac = b64url(hmac.new(JWT_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())
    assert await status_and_body(port, f"{EVENTS}?token={signing_input}.{mac}") == (401, AUTH_REQUIRED)


@pytest.mark.gen_test
async def test_an_expired_token_gets_401(port, world):
    expired = token_for(world.user, "WS-1", lifetime_s=60, now=time.time() - 3600)
    assert await status_and_body(port, f"{EVENTS}?token={expired}") == (401, AUTH_REQUIRED)


@pytest.mark.gen_test
async def test_a_token_without_exp_or_sub_gets_401(port, world):
    claims = claims_for(world.user)
    del claims["exp"]
    no_exp = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    assert await status_and_body(port, f"{EVENTS}?token={no_exp}") == (401, AUTH_REQUIRED)
    claims = claims_for(world.user)
    del claims["sub"]
    no_sub = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    assert await status_and_body(port, f"{EVENTS}?token={no_sub}") == (401, AUTH_REQUIRED)


@pytest.mark.gen_test
async def test_a_valid_token_of_a_user_in_no_workspace_gets_403(port, world, rows):
    loner = rows.user(id="USR-9")
    assert await status_and_body(port, f"{EVENTS}?token={token_for(loner, 'WS-1')}") == (403, NO_WORKSPACE)
    assert await status_and_body(port, f"{EVENTS}?token={token_for(loner)}") == (403, NO_WORKSPACE)


@pytest.mark.gen_test
async def test_a_viewer_may_stream(port, world, rows):
    viewer = rows.user(id="USR-v")
    rows.member(world.workspace, viewer, role="viewer")
    assert await status_and_body(port, f"{EVENTS}?token={token_for(viewer, 'WS-1')}") == (200, b"")


def three_workspaces(rows, owns_one: bool):
    """A user in WS-old (joined first), WS-new (joined last, owned when ``owns_one``) and WS-mid."""
    boss = rows.user(id="USR-boss")
    user = rows.user(id="USR-u")
    old = rows.workspace(boss, id="WS-old")
    new = rows.workspace(user if owns_one else boss, id="WS-new", slug="ws-new")
    mid = rows.workspace(boss, id="WS-mid")
    rows.member(old, user, joinedAt="2020-01-01T00:00:00.000Z")
    rows.member(mid, user, joinedAt="2022-01-01T00:00:00.000Z")
    if not owns_one:
        rows.member(new, user, joinedAt="2025-01-01T00:00:00.000Z")
    else:
        with rows.database.connection_context():
            from sentri.models import WorkspaceMember
            WorkspaceMember.update(joinedAt="2025-01-01T00:00:00.000Z").where(
                (WorkspaceMember.userId == user["id"]) & (WorkspaceMember.workspaceId == "WS-new")).execute()
    for workspace in (old, new, mid):
        project = rows.project(workspace, id=f"PRJ-{workspace['id']}")
        rows.run(project, id=f"RUN-{workspace['id']}")
    return user


async def assert_streams_only(port, token, served, not_found):
    """The token streams the run of workspace ``served``; for it, the runs of ``not_found`` are not found."""
    assert await status_and_body(port, f"/api/v1/runs/RUN-{served}/events?token={token}") == (200, b"")
    for other in not_found:
        assert await status_and_body(port, f"/api/v1/runs/RUN-{other}/events?token={token}") == (
            404, b'{"error":"project not found"}')


@pytest.mark.gen_test
async def test_a_token_workspace_the_user_belongs_to_is_used(port, rows):
    user = three_workspaces(rows, owns_one=True)
    await assert_streams_only(port, token_for(user, "WS-mid"), "WS-mid", not_found=["WS-new"])


@pytest.mark.gen_test
async def test_a_token_workspace_the_user_is_not_in_falls_back_to_the_owned_workspace_first(port, rows):
    user = three_workspaces(rows, owns_one=True)
    for claimed in ("WS-elsewhere", None):
        await assert_streams_only(port, token_for(user, claimed), "WS-new", not_found=["WS-old"])


@pytest.mark.gen_test
async def test_without_an_owned_workspace_the_fallback_is_the_oldest_membership(port, rows):
    user = three_workspaces(rows, owns_one=False)
    await assert_streams_only(port, token_for(user, "WS-elsewhere"), "WS-old", not_found=["WS-mid", "WS-new"])
