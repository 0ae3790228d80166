"""CORS from CORS_ORIGIN: an allowed origin may stream with credentials; any other gets no CORS headers."""

from __future__ import annotations

import pytest

from .sseclient import open_request

ALLOWED = "https://app.example.test"
REFUSED = "https://evil.example.test"


@pytest.fixture
def settings(settings):
    return settings.replace(cors_origin=(ALLOWED, "https://other.example.test"))


def cors_of(response):
    return [(name, value) for name, value in response.raw_headers
            if name.lower().startswith("access-control-") or name.lower() == "vary"]


@pytest.mark.gen_test
async def test_allowed_origin_gets_its_origin_and_credentials_on_the_stream(port, world):
    response = await open_request(port, world.events_path(), headers={"Origin": ALLOWED})
    assert response.status == 200
    assert cors_of(response) == [
        ("Access-Control-Allow-Origin", ALLOWED),
        ("Access-Control-Allow-Credentials", "true"),
        ("Vary", "Origin"),
    ]
    assert (await response.next_event())["type"] == "snapshot"


@pytest.mark.gen_test
async def test_refused_origin_gets_the_stream_without_any_cors_header(port, world):
    response = await open_request(port, world.events_path(), headers={"Origin": REFUSED})
    assert response.status == 200
    assert cors_of(response) == [("Vary", "Origin")]


@pytest.mark.gen_test
async def test_errors_carry_cors_headers_for_an_allowed_origin(port, world):
    response = await open_request(port, "/api/v1/runs/RUN-1/events", headers={"Origin": ALLOWED})
    assert response.status == 401
    assert await response.read_json() == {"error": "Authentication required."}
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["vary"] == "Origin"


@pytest.mark.gen_test
async def test_errors_carry_no_cors_headers_for_a_refused_origin(port, world):
    response = await open_request(port, world.events_path(run_id="RUN-404"), headers={"Origin": REFUSED})
    assert response.status == 404
    assert await response.read_json() == {"error": "not found"}
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.gen_test
async def test_preflight_from_an_allowed_origin_is_answered(port, world):
    response = await open_request(port, "/api/v1/runs/RUN-1/events", method="OPTIONS", headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, last-event-id"})
    assert response.status == 204
    assert cors_of(response) == [
        ("Access-Control-Allow-Origin", ALLOWED),
        ("Access-Control-Allow-Credentials", "true"),
        ("Vary", "Origin"),
        ("Access-Control-Allow-Methods", "GET, OPTIONS"),
        ("Access-Control-Allow-Headers", "Authorization, Last-Event-ID, Cache-Control, Content-Type"),
        ("Access-Control-Max-Age", "600"),
    ]


@pytest.mark.gen_test
async def test_preflight_from_a_refused_origin_is_403_without_cors_headers(port, world):
    response = await open_request(port, "/api/v1/runs/RUN-1/events", method="OPTIONS", headers={
        "Origin": REFUSED, "Access-Control-Request-Method": "GET"})
    assert response.status == 403
    assert await response.read_json() == {"error": "origin not allowed"}
    assert [name for name, _ in cors_of(response) if name.lower().startswith("access-control-")] == []


@pytest.mark.gen_test
async def test_without_cors_origin_configured_no_cors_header_is_sent(port, world, context):
    context.settings = context.settings.replace(cors_origin=())
    response = await open_request(port, world.events_path(), headers={"Origin": ALLOWED})
    assert response.status == 200
    assert cors_of(response) == []
