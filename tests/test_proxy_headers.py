"""Requests through sentri's HTTPServer with ``xheaders``: the address and scheme a proxy gives
are applied as Tornado applies them, and a request that carries none keeps the socket's own."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

from sentri.accept import HTTPServer


class Echo(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"ip": self.request.remote_ip, "protocol": self.request.protocol})


@pytest.fixture
def server_port(io_loop):
    sock, port = bind_unused_port()
    server = HTTPServer(tornado.web.Application([("/", Echo)]), xheaders=True)
    server.add_sockets([sock])
    yield port
    server.stop()


async def seen(port, headers):
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/", headers=headers)
    return json.loads(response.body)


async def seen_on_one_connection(port, *requests_headers):
    """What each request saw, all sent in turn on one kept-alive connection (as nginx holds them)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for headers in requests_headers:
            lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            writer.write(f"GET / HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            answers.append(json.loads(await reader.readexactly(length)))
    finally:
        writer.close()
    return answers


@pytest.mark.gen_test
async def test_a_request_without_proxy_headers_keeps_the_socket_address_and_scheme(server_port):
    assert await seen(server_port, {}) == {"ip": "127.0.0.1", "protocol": "http"}


@pytest.mark.gen_test
async def test_the_address_and_scheme_a_proxy_gives_are_applied(server_port):
    assert await seen(server_port, {"X-Real-Ip": "203.0.113.7", "X-Forwarded-Proto": "https"}) == {
        "ip": "203.0.113.7", "protocol": "https"}
    assert await seen(server_port, {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}) == {
        "ip": "203.0.113.9", "protocol": "http"}
    assert await seen(server_port, {"X-Scheme": "https"}) == {"ip": "127.0.0.1", "protocol": "https"}


@pytest.mark.gen_test
async def test_what_a_proxy_gave_one_request_is_not_kept_for_the_next_on_the_connection(server_port):
    assert await seen_on_one_connection(server_port, {"X-Real-Ip": "203.0.113.7", "X-Scheme": "https"}, {}) == [
        {"ip": "203.0.113.7", "protocol": "https"}, {"ip": "127.0.0.1", "protocol": "http"}]


@pytest.mark.gen_test
async def test_an_address_that_is_not_one_is_ignored(server_port):
    assert (await seen(server_port, {"X-Real-Ip": "not-an-address"}))["ip"] == "127.0.0.1"
