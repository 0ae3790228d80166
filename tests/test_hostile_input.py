"""Hostile and odd requests get the specified 4xx JSON (or Tornado's refusal), never a 500."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import token_for
from .sseclient import open_request
from .test_stream_refusals import failing_lookup

NOT_FOUND = b'{"error":"not found"}'
AUTH_REQUIRED = b'{"error":"Authentication required."}'


async def answer(port, path, headers=None, method="GET"):
    response = await open_request(port, path, headers=headers, method=method)
    if method != "HEAD":
        await response.read_to_end()
    return response.status, response.body


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "run_id",
    [
        "..",
        "%2E%2E",
        "..%2F..%2Fetc%2Fpasswd",
        "RUN-1%00",
        "%00",
        "RUN-1%0D%0AX-Injected:%20yes",
        "RUN-%FF%FE",
        "%C0%AF",
        "%ED%A0%80",  # an encoded lone surrogate
        "A" * 10240,
        "RUN-1%20",
        "%E2%9C%93",
    ],
)
async def test_a_run_id_that_cannot_name_a_run_is_404_not_found(port, world, context, run_id):
    assert await answer(port, world.events_path(run_id)) == (404, NOT_FOUND)
    assert context.hub.runs == {}


@pytest.mark.gen_test
@pytest.mark.parametrize("run_id", ["..", "RUN-%FF%FE", "RUN-1%00", "A" * 10240])
async def test_a_hostile_run_id_without_a_token_is_401_before_anything_else(port, world, run_id):
    assert await answer(port, f"/api/v1/runs/{run_id}/events") == (401, AUTH_REQUIRED)


@pytest.mark.gen_test
async def test_a_non_utf8_token_is_401_and_no_url_is_logged_with_it(port, world, caplog):
    assert await answer(port, "/api/v1/runs/RUN-1/events?token=%FF%FE.%80") == (401, AUTH_REQUIRED)
    assert await answer(port, f"/api/v1/runs/RUN-%FF/events?token={world.token}") == (404, NOT_FOUND)
    assert all(world.token not in record.getMessage() for record in caplog.records)


@pytest.mark.gen_test
async def test_odd_but_harmless_headers_are_answered_normally(port, world):
    assert await answer(port, "/api/v1/runs/RUN-1/events", {"Cookie": "access_token=%%%; ===;;"}) == (
        401, AUTH_REQUIRED)
    assert await answer(port, "/api/v1/runs/RUN-1/events", {"Authorization": "Bearer \xff\xfe"}) == (
        401, AUTH_REQUIRED)
    assert await answer(port, "/api/v1/runs/RUN-1/events", {"Authorization": "Bearer a.b"}) == (401, AUTH_REQUIRED)
    response = await open_request(port, world.events_path(), headers={"X-Padding": "p" * 8000})
    assert response.status == 200


@pytest.mark.gen_test
async def test_headers_beyond_tornados_limit_get_the_connection_closed_without_an_answer(port, world):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {world.events_path()} HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 100_000}\r\n\r\n".encode())
        await writer.drain()
    except ConnectionError:
        pass  # the server may hang up while the request is still being written
    try:
        received = await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        received = b""
    writer.close()
    assert received == b""  # Tornado refuses by closing: no 500, no partial answer


@pytest.mark.gen_test
async def test_a_garbage_request_line_is_refused_without_a_500(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")
    await writer.drain()
    try:
        received = await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        received = b""
    writer.close()
    assert received == b"HTTP/1.1 400 Bad Request\r\n\r\n"  # Tornado's own answer, then it closes


@pytest.mark.gen_test
async def test_the_legacy_api_prefix_redirects_with_308_and_keeps_the_query_string(port, world):
    response = await open_request(port, "/api/runs/RUN-1/events?token=abc&x=%FF&y=1")
    assert response.status_line == b"HTTP/1.1 308 Permanent Redirect"
    assert response.headers["location"] == "/api/v1/runs/RUN-1/events?token=abc&x=%FF&y=1"
    assert response.headers["content-length"] == "0"
    response = await open_request(port, "/api/runs/RUN%2D1/events")
    assert response.headers["location"] == "/api/v1/runs/RUN%2D1/events"
    for method in ("HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        response = await open_request(port, "/api/anything", method=method)
        assert (response.status, response.headers["location"]) == (308, "/api/v1/anything")


@pytest.mark.gen_test
async def test_a_redirected_stream_request_works_at_its_new_address(port, world):
    response = await open_request(port, f"/api/runs/RUN-1/events?token={world.token}")
    assert response.status == 308
    followed = await open_request(port, response.headers["location"])
    assert followed.status == 200


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/api/v1", "/api/v1/", "/api/v1/runs", "/api/v1/runs/RUN-1",
                                  "/api/v1/runs/RUN-1/events/more", "/api/v1/nothing"])
async def test_paths_under_api_v1_are_not_redirected_and_unknown_ones_are_404_json(port, world, path):
    response = await open_request(port, path)
    await response.read_to_end()
    assert (response.status, response.body) == (404, NOT_FOUND)
    assert "location" not in response.headers
    assert response.headers["content-type"] == "application/json; charset=utf-8"


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/", "/nope", "/%FF", "/runs/RUN-1/events", "/" + "x" * 10000])
async def test_unknown_paths_are_404_json(port, path):
    assert await answer(port, path) == (404, NOT_FOUND)


@pytest.mark.gen_test
async def test_other_methods_on_the_stream_path_are_refused_with_json_not_a_500(port, world):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, body = await answer(port, world.events_path(), method=method)
        assert 400 <= status < 500 and body.startswith(b'{"error":'), (method, status, body)


@pytest.mark.gen_test
async def test_a_user_in_no_workspace_gets_the_403_for_a_malformed_run_id_too(port, world, rows):
    loner = rows.user(id="USR-9")
    path = f"/api/v1/runs/RUN-%FF/events?token={token_for(loner)}"
    assert await answer(port, path) == (
        403, b'{"error":"You are not a member of any workspace. Please contact your administrator."}')


@pytest.mark.gen_test
async def test_a_malformed_run_id_while_the_database_fails_is_503_not_a_500(port, world, context, monkeypatch,
                                                                          expect_log):
    failing_lookup(context, monkeypatch, expect_log, run_id="RUN-%FF")
    assert await answer(port, world.events_path("RUN-%FF")) == (503, b'{"error":"database unavailable"}')
