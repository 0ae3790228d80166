"""What a connect learns, reused by the connects that follow for a bounded time (README "Reconnect storms").

A reconnect storm brings thousands of clients for the same few runs within a second, each
with a token, a workspace and a run to check and a snapshot to read, encode and sign. The
answers are the same for all of them, so each is computed once and shared, with these bounds:

* ``VerifiedTokens``: a token's signature and claims are checked once per exact token text
  and remembered until its ``exp``. Revocation is not part of it: it is checked per connect
  (``sentri.revocation``).
* ``StreamReads``: a user's workspace (membership) is remembered for at most ``max_age_s``
  (1 s) from the moment its query was sent; so is a run's answer (found with its snapshot,
  not found, another workspace's). A found run's answer is reused only by a connect whose
  stream is reserved and only while the run has had no event since the read was sent
  (``run_version``): the reusing client holds every event from its reservation on, and the
  snapshot already holds everything before (docs/stream.md §3). It is also shared only between
  connects that read the same newest id from the run's history just before: an event already
  in history (its log line stored) but not yet delivered here does not change the version, and
  a snapshot read before it would lack a line the snapshot's id says it holds. Any event (a log, a ``done``)
  thus ends the reuse at once; a change without an event (a deletion, a removed membership,
  a run finished in the database only) is seen once ``max_age_s`` has passed.
  Identical reads in flight are joined under the same conditions, so a storm on one run costs
  one read per change of the run (or per ``max_age_s``), and a user's first connect resolves
  the workspace and reads the run in one trip to a database thread.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, Generic, Hashable, Optional, Tuple, TypeVar

from .tokens import Identity, verify

T = TypeVar("T")

# How long a membership or a run's visibility answer may be reused, from when its query was sent.
MAX_AGE_S = 1.0
# Entries beyond which expired ones are dropped (and, if still too many, all): a bound on memory.
MAX_ENTRIES = 100_000


class VerifiedTokens:
    """``tokens.verify`` remembered per exact token text until the token's ``exp``."""

    def __init__(self, secret: str, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.max_entries = max_entries
        self.clock = clock
        self._verified: Dict[str, Identity] = {}

    def verify(self, token: str) -> Optional[Identity]:
        identity = self._verified.get(token)
        now = self.clock()
        if identity is not None:
            if now < identity.expires_at:  # PyJWT's own test: valid while now < exp
                return identity
            del self._verified[token]
        identity = verify(token, self.secret)
        if identity is not None and now < identity.expires_at:
            if len(self._verified) >= self.max_entries:
                self._verified = {key: value for key, value in self._verified.items() if now < value.expires_at}
                if len(self._verified) >= self.max_entries:
                    self._verified.clear()
            self._verified[token] = identity
        return identity


class _Entry(Generic[T]):
    __slots__ = ("until", "version", "value")

    def __init__(self, until: float, version: Optional[Hashable], value: T) -> None:
        self.until = until
        self.version = version
        self.value = value


class AgedAnswers(Generic[T]):
    """Answers by key, each with the time until which it may be reused and the run version it was read at."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: Dict[Hashable, _Entry[T]] = {}
        self._pending: Dict[Hashable, Tuple[Optional[Hashable], asyncio.Future[Any]]] = {}

    def get(self, key: Hashable, now: float, version: Optional[Hashable] = None,
            needs_version: Callable[[T], bool] = lambda value: False) -> Optional[_Entry[T]]:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.until:
            del self._entries[key]
            return None
        if needs_version(entry.value) and (version is None or entry.version != version):
            return None
        return entry

    def put(self, key: Hashable, until: float, version: Optional[Hashable], value: T, now: float) -> None:
        self._drop_expired(now)
        if len(self._entries) >= self.max_entries:
            self._entries = {k: e for k, e in self._entries.items() if now < e.until}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        # Re-inserted, not updated in place: the dict's order stays the order of ``until``.
        self._entries.pop(key, None)
        self._entries[key] = _Entry(until, version, value)

    def _drop_expired(self, now: float) -> None:
        """Forget the oldest answers whose bound has passed: O(1) per answer, amortised.

        Every answer lives at most ``MAX_AGE_S``, yet an expired one used to stay until its key
        was asked again: a run's snapshot (encoded, kilobytes) for every run ever connected to,
        up to ``max_entries`` (the soak saw instances grow by ~20 % over 10 minutes of new runs).
        Answers are put in about the order they expire (reads begin, then finish, within the
        bound), so expired ones are at the front; one finished out of order waits a little.
        """
        entries = self._entries
        while entries:
            oldest = next(iter(entries))
            if now < entries[oldest].until:
                return
            del entries[oldest]

    def ready(self, key: Hashable, now: float, version: Optional[Hashable],
              needs_version: Callable[[T], bool]) -> bool:
        """Whether ``key`` has a reusable answer, or a read in flight at this version."""
        return self.get(key, now, version, needs_version) is not None or self.pending(key, version) is not None

    def pending(self, key: Hashable, version: Optional[Hashable]) -> Optional[asyncio.Future[Any]]:
        """A read in flight for ``key`` sent at this very run version (None only joins None)."""
        found = self._pending.get(key)
        if found is None or found[0] != version:
            return None
        return found[1]

    def start(self, key: Hashable, version: Optional[Hashable], task: asyncio.Future[Any]) -> None:
        self._pending[key] = (version, task)
        task.add_done_callback(lambda done: self._finished(key, done))

    def _finished(self, key: Hashable, task: asyncio.Future[Any]) -> None:
        found = self._pending.get(key)
        if found is not None and found[1] is task:
            del self._pending[key]
        if not task.cancelled():
            task.exception()  # retrieved here: a joiner that gave up must not leave it unlogged-unread

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
