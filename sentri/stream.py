"""One open event stream: a raw non-blocking socket, its unsent bytes, and one way out.

After the HTTP request is checked, the handler detaches the connection from Tornado and
the stream owns the socket. Tornado's request, handler and IOStream objects (about 18 KB an
idle connection) are released; what stays is this object, the socket and one reader
registration on the event loop. Writes go straight to ``socket.send``; only bytes the
kernel would not take are kept, up to ``SSE_MAX_WRITABLE_BYTES``, past which the stream is
cut so the client reconnects (docs/stream.md §10). ``close()`` is the single exit: it unregisters the
stream everywhere and closes the socket, once.

A ``frame`` event (a screencast image) is worth only until the next one: while one waits
whole in the unsent bytes, a newer one takes its place (the older is dropped, the newer goes
at the end, so ids still only grow), instead of the bytes growing toward the bound. Every
other event is kept in order; a frame already partly sent is finished.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from typing import AbstractSet, Deque, List, Optional, Protocol, Sequence, Tuple, Union

from . import sse
from .history import id_key


class CloseReason:
    CLIENT_GONE = "client_gone"
    DONE = "done"
    DRAINED = "drained"
    TOO_SLOW = "too_slow"
    TOO_OLD = "too_old"
    REVOKED = "revoked"
    REFUSED = "refused"


# How long a stream that was told to end may take to drain its last bytes to a slow reader.
ENDING_GRACE_S = 10.0


# A screencast ``frame`` event's JSON starts so (the type is always the first key, docs/stream.md §5).
REPLACEABLE_PREFIXES = (b'{"type":"frame",', b'{"type":"frame"}')


class Frame:
    """One event, encoded once for every listener; the chunked form is built on first need."""

    __slots__ = ("raw", "_chunked", "ends_stream", "event_id", "key", "_log_message", "replaceable")

    def __init__(self, raw: bytes, ends_stream: bool = False, event_id: Optional[str] = None) -> None:
        self.raw = raw
        self._chunked: Optional[bytes] = None
        self.ends_stream = ends_stream
        self.event_id = event_id
        # The id as a comparable pair, computed once: each listener drops what it already has.
        self.key = id_key(event_id)
        self._log_message: Union[str, None, bool] = False  # False: not read yet
        # A newer frame of the run may take this one's place in a slow listener's unsent bytes.
        self.replaceable = raw.startswith(REPLACEABLE_PREFIXES, raw.find(b"{"))

    def log_message(self) -> Optional[str]:
        """A ``log`` event's message (an ``agent_event``'s key), read once per frame and only when a stream asks."""
        if self._log_message is False:
            self._log_message = sse.log_message_of(self.raw)
        return self._log_message  # type: ignore[return-value]

    def wire(self, chunked: bool) -> bytes:
        if not chunked:
            return self.raw
        if self._chunked is None:
            self._chunked = sse.chunk(self.raw)
        return self._chunked


HEARTBEAT_FRAME = Frame(sse.HEARTBEAT)


class UnsentFrame:
    """A replaceable frame's bytes waiting whole among a stream's unsent bytes; emptied when replaced."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


Unsent = Union[bytes, memoryview, UnsentFrame]


def bound_kernel_unsent(sock: socket.socket, limit_bytes: int) -> bool:
    """Let the kernel hold at most about ``limit_bytes`` of a TCP stream's bytes not yet sent
    (``TCP_NOTSENT_LOWAT``); the rest waits among the stream's unsent bytes. Returns whether it applied.

    Why: left alone, the send buffer autotunes up to ``tcp_wmem``'s maximum (4 MiB here, and on
    loopback it starts near 2.6 MiB), and bytes the kernel holds can be neither replaced nor
    counted: a viewer reading at 200 KB/s got its newest screencast frame 20 s after publishing
    stopped (bench/slow_viewer.py), all of it older frames queued in the kernel. With the bound,
    a frame waits in user space, where a newer one takes its place (``write``), and the too-slow
    bound (``SSE_MAX_WRITABLE_BYTES``) sees about everything the client is behind.

    Why not ``SO_SNDBUF``: it caps bytes in flight too (it turns autotuning off), so a client far
    away could never have more than that many bytes unacknowledged, a throughput ceiling of
    buffer / RTT; the low-water mark bounds only what is queued and not yet sent, and leaves the
    in-flight window to autotuning. Measured on the slow viewer (60 s, loopback): 16 KiB
    low-water mark, newest frame 1.2 s after publishing stopped; ``SO_SNDBUF`` 64 KiB, 2.0 s;
    no bound, 20 s (docs/stream.md §10).

    Not a TCP socket (a Unix socket in a test), or a system without the option: returns False.
    """
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)  # Linux (3.12+) and macOS
    if option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, limit_bytes)
    except OSError:
        return False
    return True


class StreamOwner(Protocol):
    """What a stream needs from the registry that holds it (the hub), so this module need not import it."""

    #: Unsent bytes past which a reader is too slow and its stream is cut.
    max_writable_bytes: int

    def forget(self, stream: EventStream) -> None:
        """Take the stream out of the registry (it is ending or closed)."""

    def stream_closed(self, stream: EventStream) -> None:
        """The stream has closed its socket, once."""


class EventStream:
    """A listener on one run. PENDING (holding frames) until ``open``; then live; then closed."""

    __slots__ = (
        "hub",
        "run_id",
        "jti",
        "workspace_id",
        "client_ip",
        "opened_at",
        "sock",
        "chunked",
        "held",
        "held_bytes",
        "unsent",
        "unsent_bytes",
        "unsent_frame",
        "frames_replaced",
        "slot",
        "ending",
        "closed",
        "close_reason",
        "deadline",
        "last_event_id",
        "last_key",
        "snapshot_logs",
        "opened",
        "from_snapshot",
        "expires_at",
        "__weakref__",
    )

    def __init__(self, hub: StreamOwner, run_id: str, jti: Optional[str] = None, client_ip: str = "") -> None:
        self.hub = hub
        self.run_id = run_id
        self.jti = jti
        self.workspace_id: Optional[str] = None
        self.client_ip = client_ip
        self.opened_at = time.monotonic()
        self.from_snapshot = False  # went live on a snapshot (not a replay): its stored events are in it
        self.sock: Optional[socket.socket] = None
        self.chunked = True
        # Frames that arrive while the snapshot is being read wait here, so none is lost (docs/stream.md §3).
        self.held: Optional[List[Frame]] = []
        self.held_bytes = 0
        self.unsent: Optional[Deque[Unsent]] = None
        self.unsent_bytes = 0
        # The replaceable frame waiting whole in ``unsent``, if any, and how many were replaced.
        self.unsent_frame: Optional[UnsentFrame] = None
        self.frames_replaced = 0
        self.slot = -1
        self.ending = False
        self.closed = False
        self.close_reason: Optional[str] = None
        self.deadline: Optional[asyncio.TimerHandle] = None
        # The newest event id this client has (replayed, in its snapshot, or sent live) and its
        # comparable form: a frame with an id not above ``last_key`` was sent already (an event
        # both replayed from history and relayed, or caught up after a relay outage).
        self.last_event_id: Optional[str] = None
        self.last_key: Optional[Tuple[int, int]] = None
        # Log lines its snapshot held, for one heartbeat interval after it opened: a log stored
        # before the snapshot was read may still arrive live (relayed a moment later).
        self.snapshot_logs: Optional[AbstractSet[str]] = None
        # Set by the hub when the stream goes live (open or finish): only such streams count as opened/closed.
        self.opened = False
        # Monotonic time past which the hub ends the stream as too old (SENTRI_MAX_STREAM_AGE_S); 0: never.
        self.expires_at = 0.0

    @property
    def is_pending(self) -> bool:
        return self.held is not None

    # -- delivery ---------------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        if self.closed or self.ending:
            return
        held = self.held
        if held is not None:
            held.append(frame)
            self.held_bytes += len(frame.raw)
            if self.held_bytes > self.hub.max_writable_bytes:
                self.close(CloseReason.TOO_SLOW)
            return
        if not self._takes(frame):
            return
        self.write(frame.wire(self.chunked), frame.replaceable)
        if frame.ends_stream:
            self.end(CloseReason.DONE)

    def send_many(self, frames: Sequence[Frame]) -> None:
        """Frames that arrived together (a batch): one ``send`` syscall for all, not one each."""
        if self.closed or self.ending:
            return
        if len(frames) == 1 or self.held is not None or self.unsent is not None:
            # Held, or queued behind unsent bytes (where a frame may replace another): one by one.
            for frame in frames:
                self.send(frame)
            return
        pieces: List[bytes] = []
        ends = False
        for frame in frames:
            if self._takes(frame):
                pieces.append(frame.wire(self.chunked))
                if frame.ends_stream:
                    ends = True
                    break
        if pieces:
            self.write(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if ends:
            self.end(CloseReason.DONE)

    def _takes(self, frame: Frame) -> bool:
        """Whether a live stream sends ``frame`` (not one it has already); keeps its newest id."""
        if self.snapshot_logs is not None and frame.log_message() in self.snapshot_logs:
            return False
        key = frame.key
        if key is not None:
            if self.last_key is not None and key <= self.last_key:
                return False
            self.last_key, self.last_event_id = key, frame.event_id
        return True

    def write(self, data: bytes, replaceable: bool = False) -> None:
        if self.closed:
            return
        if self.unsent is not None:
            if not replaceable:
                self._keep(data, len(data))
                return
            older = self.unsent_frame
            if older is not None:  # never sent a byte of it: the client never sees it
                self.unsent_bytes -= len(older.data)
                older.data = b""
                self.frames_replaced += 1
                if self.unsent[-1] is older:
                    # Nothing queued after it: its emptied entry goes too, so a reader that stopped
                    # reading and gets only frames does not pile up entries the byte bound never sees.
                    self.unsent.pop()
            self.unsent_frame = UnsentFrame(data)
            self._keep(self.unsent_frame, len(data))
            return
        try:
            sent = self.sock.send(data)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close(CloseReason.CLIENT_GONE)
            return
        if sent < len(data):
            self.unsent = collections.deque()
            rest = memoryview(data)[sent:]
            self._keep(rest, len(rest))
            if not self.closed:
                asyncio.get_running_loop().add_writer(self.sock.fileno(), self._on_writable)  # type: ignore[union-attr]

    def _keep(self, data: Unsent, size: int) -> None:
        self.unsent.append(data)  # type: ignore[union-attr]
        self.unsent_bytes += size
        if self.unsent_bytes > self.hub.max_writable_bytes:
            self.close(CloseReason.TOO_SLOW)

    def _on_writable(self) -> None:
        unsent = self.unsent
        while unsent:
            piece = unsent[0]
            if isinstance(piece, UnsentFrame):
                # Going out now: from here on it is finished, not replaced.
                if piece is self.unsent_frame:
                    self.unsent_frame = None
                if not piece.data:
                    unsent.popleft()
                    continue
                unsent[0] = piece = piece.data
            try:
                sent = self.sock.send(piece)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close(CloseReason.CLIENT_GONE)
                return
            self.unsent_bytes -= sent
            if sent < len(piece):
                unsent[0] = memoryview(piece)[sent:]
                return
            unsent.popleft()
        self.unsent = None
        self.unsent_frame = None
        asyncio.get_running_loop().remove_writer(self.sock.fileno())  # type: ignore[union-attr]
        if self.ending:
            self.close(self.close_reason or CloseReason.DONE)

    def _on_readable(self) -> None:
        # A stream's client sends nothing after its request; readable means it hung up.
        try:
            data = self.sock.recv(4096)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close(CloseReason.CLIENT_GONE)

    # -- lifecycle --------------------------------------------------------------------------

    def attach_socket(self, sock: socket.socket, chunked: bool, kernel_unsent_bytes: int = 0) -> None:
        """Own ``sock`` from now on; ``kernel_unsent_bytes``: see ``bound_kernel_unsent``."""
        self.sock = sock
        self.chunked = chunked
        if kernel_unsent_bytes > 0:
            bound_kernel_unsent(sock, kernel_unsent_bytes)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)

    def release_held(self) -> List[Frame]:
        held, self.held, self.held_bytes = self.held or [], None, 0
        return held

    def end(self, reason: str) -> None:
        """Finish the response properly (last chunk), then close once the bytes are out."""
        if self.closed or self.ending:
            return
        self.ending = True
        self.close_reason = reason
        self.hub.forget(self)
        if self.sock is None:
            self.close(reason)
            return
        if self.chunked:
            self.write(sse.LAST_CHUNK)
        if self.closed:
            return
        if self.unsent is None:
            self.close(reason)
        else:
            self.deadline = asyncio.get_running_loop().call_later(ENDING_GRACE_S, self.close, CloseReason.TOO_SLOW)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.held = None
        self.unsent = None
        self.unsent_frame = None
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.hub.forget(self)
        sock = self.sock
        if sock is not None:
            # Only this method closes the socket, and it drops ``self.sock`` as it does: the fd is valid here.
            loop = asyncio.get_running_loop()
            loop.remove_reader(sock.fileno())
            loop.remove_writer(sock.fileno())
            with contextlib.suppress(OSError):  # close never raises on Linux for a valid fd
                sock.close()
            self.sock = None
        self.hub.stream_closed(self)
