"""Liveness and readiness: cheap, unauthenticated, outside /api/v1; readiness names what failed.

Every app in this module has a relay on a private Redis (the tests stop and start it).
"""

from __future__ import annotations

import os

import pytest
import tornado.httpserver
import tornado.testing

from sentri.app import build_context, make_app
from sentri.drain import drain

from . import pg, sseclient
from .conftest import close_context
from .redis_server import redis_server  # noqa: F401 (fixture)
from .services import wait_until
from .sseclient import open_request

DEFAULT_PG_SERVER = "postgresql://postgres@127.0.0.1:5432/test"


async def get_json(port, path):
    response = await open_request(port, path)
    return response.status, await response.read_json()


async def readiness_is(port, status):
    return (await get_json(port, "/readyz"))[0] == status


@pytest.fixture
def relay_context(settings, redis_server, io_loop):  # noqa: F811
    context = build_context(settings.replace(redis_url=redis_server.url))
    io_loop.run_sync(context.bus.start)
    yield context
    close_context(context, io_loop)


@pytest.fixture
def app(relay_context):
    return make_app(relay_context)


@pytest.mark.gen_test
async def test_liveness_answers_ok_without_credentials(port):
    response = await open_request(port, "/healthz")
    assert response.status == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert await response.read_json() == {"status": "ok"}


@pytest.mark.gen_test
async def test_readiness_is_ready_when_the_database_answers_and_the_relay_is_connected(port, relay_context):
    assert await relay_context.bus.wait_connected(5.0)
    assert await get_json(port, "/readyz") == (200, {"status": "ready"})


@pytest.mark.gen_test
async def test_readiness_is_503_draining_once_a_drain_starts_while_liveness_stays_ok(port, relay_context, expect_log):
    expect_log("sentri.access", r"GET /readyz 503$")
    assert await relay_context.bus.wait_connected(5.0)
    await drain(relay_context, 0.0)
    assert await get_json(port, "/readyz") == (503, {"error": "not ready", "failed": ["draining"]})
    assert await get_json(port, "/healthz") == (200, {"status": "ok"})


@pytest.mark.gen_test(timeout=30)
async def test_readiness_is_503_relay_while_redis_is_down_and_ready_again_when_it_returns(
        port, relay_context, redis_server, expect_log):  # noqa: F811
    expect_log("sentri.access", r"GET /readyz 503$")
    expect_log("sentri.relay", r"relay lost redis")
    assert await relay_context.bus.wait_connected(5.0)
    assert await readiness_is(port, 200)
    redis_server.stop()
    await wait_until(lambda: readiness_is(port, 503), what="readiness 503 after Redis stopped")
    assert await get_json(port, "/readyz") == (503, {"error": "not ready", "failed": ["relay"]})
    redis_server.start()
    assert await relay_context.bus.wait_connected(20.0)
    assert await get_json(port, "/readyz") == (200, {"status": "ready"})


@pytest.mark.gen_test(timeout=30)
async def test_readiness_is_503_database_while_the_database_is_gone(settings, expect_log):
    expect_log("sentri.access", r"GET /readyz 503$")
    expect_log("sentri.health", r"readiness: database check failed \(OperationalError\)")
    server_url = os.environ.get("SENTRI_TEST_DATABASE_URL") or DEFAULT_PG_SERVER
    with pg.temporary_database(server_url) as url:
        context = build_context(settings.replace(database_url=url, redis_url=""))
        sock, port = tornado.testing.bind_unused_port()
        server = tornado.httpserver.HTTPServer(make_app(context))
        server.add_sockets([sock])
        try:
            assert await get_json(port, "/readyz") == (200, {"status": "ready"})
            pg.drop_database(server_url, url)
            assert await get_json(port, "/readyz") == (503, {"error": "not ready", "failed": ["database"]})
        finally:
            server.stop()
            # Its own server: end the connections here, or their tasks outlive the test's loop.
            await sseclient.close_all()
            await server.close_all_connections()
            context.store.close()
