"""A raw HTTP/SSE test client: sends exact bytes and keeps the exact bytes it receives.

Tests assert what goes over the wire, so this client parses nothing it does not have to:
it splits the response head from the body, undoes the chunked transfer coding, and hands
back the SSE body as bytes, frame by frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Dict, List, Optional, Tuple

OPEN_RESPONSES: List[StreamResponse] = []


async def close_all() -> None:
    """Close every connection the test opened (conftest calls this at teardown)."""
    while OPEN_RESPONSES:
        response = OPEN_RESPONSES.pop()
        response.close()
        with contextlib.suppress(ConnectionError, OSError):
            await response.writer.wait_closed()


class StreamResponse:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.status_line = b""
        self.headers: Dict[str, str] = {}
        self.header_lines: List[Tuple[str, str]] = []
        self.chunked = False
        self.body = b""  # every body byte received so far, de-chunked
        self.ended = False  # the response body ended (last chunk, or the server closed)
        self._buffer = b""

    @property
    def raw_headers(self) -> List[Tuple[str, str]]:
        return self.header_lines

    async def read_head(self) -> None:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            self.header_lines.append((name, value.strip()))
            self.headers[name.lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"

    async def _read_some(self) -> bool:
        """Read the next piece of body; False once the body has ended."""
        if self.ended:
            return False
        if not self.chunked:
            length = self.headers.get("content-length")
            if length is not None:
                self.body += await self.reader.readexactly(int(length))
                self.ended = True
                return True
            data = await self.reader.read(65536)
            if not data:
                self.ended = True
                return False
            self.body += data
            return True
        size_line = await self.reader.readuntil(b"\r\n")
        size = int(size_line.strip(), 16)
        if size == 0:
            await self.reader.readuntil(b"\r\n")
            self.ended = True
            return False
        data = await self.reader.readexactly(size + 2)
        assert data.endswith(b"\r\n"), "chunk not terminated by CRLF"
        self.body += data[:-2]
        return True

    async def read_json(self) -> Any:
        while not self.ended:
            await self._read_some()
        return json.loads(self.body)

    async def next_frame(self, timeout: float = 5.0) -> bytes:
        """The next complete SSE frame (comment or event), blank line included."""

        async def wait() -> bytes:
            while b"\n\n" not in self._pending():
                if not await self._read_some():
                    raise EOFError(f"stream ended; unparsed bytes: {self._pending()!r}")
            pending = self._pending()
            frame, _, _ = pending.partition(b"\n\n")
            self._buffer += frame + b"\n\n"
            return frame + b"\n\n"

        return await asyncio.wait_for(wait(), timeout)

    def _pending(self) -> bytes:
        return self.body[len(self._buffer):]

    async def next_event(self, timeout: float = 5.0, skip_heartbeats: bool = True) -> Dict[str, Any]:
        while True:
            frame = await self.next_frame(timeout)
            if skip_heartbeats and frame.startswith(b":"):
                continue
            data = [line[len(b"data: "):] for line in frame.split(b"\n") if line.startswith(b"data: ")]
            if not data and frame.startswith(b"retry: "):
                continue  # a reconnection-delay hint, not an event
            assert len(data) == 1, f"expected one data line in {frame!r}"
            return json.loads(data[0])

    async def read_to_end(self, timeout: float = 5.0) -> bytes:
        async def wait() -> None:
            while await self._read_some():
                pass

        await asyncio.wait_for(wait(), timeout)
        return self.body

    async def server_closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (EOF after the body)."""
        try:
            await self.read_to_end(timeout)
            rest = await asyncio.wait_for(self.reader.read(1), timeout)
        except (ConnectionError, asyncio.IncompleteReadError):
            return True
        return rest == b""

    def close(self) -> None:
        self.writer.close()


async def open_request(
    port: int,
    path: str,
    headers: Optional[Dict[str, str]] = None,
    method: str = "GET",
    version: str = "HTTP/1.1",
    host: str = "127.0.0.1",
    body: bytes = b"",
    raw_request: Optional[bytes] = None,
    source_ip: Optional[str] = None,
) -> StreamResponse:
    """``source_ip``: the TCP source address (any 127.x address works on Linux); default: the kernel's choice."""
    local_addr = (source_ip, 0) if source_ip is not None else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr)
    if raw_request is None:
        lines = [f"{method} {path} {version}", f"Host: {host}:{port}"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body:
            lines.append(f"Content-Length: {len(body)}")
        raw_request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    writer.write(raw_request)
    await writer.drain()
    response = StreamResponse(reader, writer)
    OPEN_RESPONSES.append(response)
    await response.read_head()
    return response
